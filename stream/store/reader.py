"""The readers' side of Redis: the exporter's snapshot and `crm-kpi at-risk` (blocking client).

A snapshot is one Lua call (`lua/read.lua`) whatever the number of windows,
buckets and sorted sets, so a scrape costs one round trip; with a `ReadCache`
it also transfers and sums only the buckets written since the last read.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.exceptions

from stream.events.windows import Window
from stream.kpis import DISTINCT_COUNTS, Current, KpiConfig, Totals, ZStat, churn_risk, sorted_set_queries
from stream.kpis.customers import AT_RISK, RISK, RiskState
from stream.kpis.registry import DistinctCount
from stream.store.keys import BUCKET_TOKEN_FIELD, Keys
from stream.store.writer import as_text, lua_script

__all__ = ["ReadCache", "Snapshot", "read_at_risk", "read_snapshot"]


@dataclass(frozen=True)
class Snapshot:
    """Everything the KPI read-outs need: per-window totals and the current state."""

    windows: dict[str, Totals]
    current: Current


_READ_LUA = lua_script("read.lua")
_READ_SHA = hashlib.sha1(_READ_LUA.encode()).hexdigest()


def _evalsha_ro(client: redis.Redis, keys: list[str], args: list[Any]) -> Any:
    """Run read.lua with EVALSHA_RO (Redis 7+): read-only, so a read-only ACL user may run it.

    The script is loaded once per server (SCRIPT LOAD after a NOSCRIPT reply).
    """
    try:
        return client.evalsha_ro(_READ_SHA, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        client.script_load(_READ_LUA)
        return client.evalsha_ro(_READ_SHA, len(keys), *keys, *args)


@dataclass
class _WindowSums:
    """One window as a reader last saw it: each bucket's token and fields, and their sums."""

    buckets: dict[int, tuple[str, dict[str, int]]] = field(default_factory=dict)
    sums: dict[str, int] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)  # field -> buckets holding it

    def drop(self, bucket: int) -> None:
        _, fields = self.buckets.pop(bucket)
        for name, value in fields.items():
            left = self.present[name] - 1
            if left:
                self.present[name] = left
                self.sums[name] -= value
            else:
                del self.present[name], self.sums[name]

    def add(self, bucket: int, token: str, fields: dict[str, int]) -> None:
        self.buckets[bucket] = (token, fields)
        for name, value in fields.items():
            self.present[name] = self.present.get(name, 0) + 1
            self.sums[name] = self.sums.get(name, 0) + value


class ReadCache:
    """The window sums a long-lived reader (the exporter) keeps between reads.

    Each read sends the (bucket, token) pairs held; Redis answers with the buckets
    whose token changed (every batch that writes a bucket sets a new token,
    `BUCKET_TOKEN_FIELD`) and those that vanished, and the sums are updated by
    difference. Figures are exactly those of a full read - a restored or rolled-back
    Redis shows other tokens, so its buckets are read again - while a scrape costs the
    buckets that changed instead of every field of every bucket of every window.
    """

    def __init__(self) -> None:
        self.windows: dict[str, _WindowSums] = {}
        self.lock = threading.Lock()


def read_snapshot(
    client: redis.Redis,
    keys: Keys,
    windows: Sequence[Window],
    config: KpiConfig,
    now_s: float,
    future_skew_s: float,
    cache: ReadCache | None = None,
) -> Snapshot:
    """Read all windows' summed counters and the current state in one Lua call.

    Each window's totals also carry its exact distinct counts (`DistinctCount`)
    and the current counters (`Totals.current`). `now_s` is unix seconds;
    buckets up to `future_skew_s` ahead are included (events may be that early).
    `cache`: keep the sums between calls (see `ReadCache`); None reads everything.
    """
    cache = cache if cache is not None else ReadCache()
    with cache.lock:
        return _read(client, keys, windows, config, now_s, future_skew_s, cache)


def _read(
    client: redis.Redis,
    keys: Keys,
    windows: Sequence[Window],
    config: KpiConfig,
    now_s: float,
    future_skew_s: float,
    cache: ReadCache,
) -> Snapshot:
    queries = sorted_set_queries(now_s, config)
    ranges: list[tuple[_WindowSums, int, int]] = []
    argv: list[Any] = [BUCKET_TOKEN_FIELD, len(windows)]
    for w in windows:
        first, last = w.first_bucket(now_s), w.last_bucket(now_s, future_skew_s)
        sums = cache.windows.setdefault(w.label, _WindowSums())
        for bucket in [b for b in sums.buckets if not first <= b <= last]:
            sums.drop(bucket)  # slid out of the window
        ranges.append((sums, first, last))
        argv += [keys.bucket_prefix(w.label), keys.distinct_prefix(w.label), first, last, len(sums.buckets)]
        for bucket, (token, _) in sums.buckets.items():
            argv += [bucket, token]
    argv += [DistinctCount.DISTINCT_CODE, DistinctCount.REPEATED_CODE, len(DISTINCT_COUNTS)]
    argv += [d.name for d in DISTINCT_COUNTS]
    argv += [keys.current, len(queries)]
    for name, threshold in queries.items():
        argv += [keys.zset(name), repr(threshold)]
    reply = _evalsha_ro(client, [keys.current], argv)
    totals: dict[str, Totals] = {}
    for w, (sums, _, _), (fetched, gone, distinct) in zip(windows, ranges, reply, strict=False):
        for bucket in gone:
            sums.drop(int(bucket))
        for j in range(0, len(fetched), 3):
            bucket, token, flat = int(fetched[j]), as_text(fetched[j + 1]), fetched[j + 2]
            if bucket in sums.buckets:
                sums.drop(bucket)
            names = map(as_text, flat[0::2])
            sums.add(
                bucket, token, {n: int(v) for n, v in zip(names, flat[1::2], strict=True) if n != BUCKET_TOKEN_FIELD}
            )
        window = Totals(sums.sums)
        window.update(zip(map(as_text, distinct[0::2]), map(int, distinct[1::2]), strict=True))
        totals[w.label] = window
    cur_flat = reply[len(windows)]
    counters = Totals(zip(map(as_text, cur_flat[0::2]), map(int, cur_flat[1::2]), strict=True))
    for t in totals.values():
        t.current = counters
    zstats: dict[str, ZStat] = {}
    for name, (size, below, lowest) in zip(queries, reply[len(windows) + 1 :], strict=True):
        low = as_text(lowest)
        zstats[name] = ZStat(int(size), int(below), float(low) if low else None)
    return Snapshot(totals, Current(counters, zstats, now_s, config, totals))


def read_at_risk(client: redis.Redis, keys: Keys, now_s: float, top: int | None = None) -> list[dict[str, Any]]:
    """Customers at churn risk now, highest points first: id, points, reasons, until (unix s).

    The at-risk set holds each customer scored by the moment they fall under the
    threshold; points and reasons are recomputed at `now_s` from the stored items.
    """
    members: list[tuple[Any, float]] = client.zrangebyscore(  # type: ignore[assignment]
        keys.zset(AT_RISK.name), f"({now_s!r}", "+inf", withscores=True
    )
    if not members:
        return []
    ids = [as_text(m) for m, _ in members]
    raw = client.mget([keys.entity(RISK.key_tag, c) for c in ids])
    now_us = int(now_s * 1_000_000)
    out: list[dict[str, Any]] = []
    for cid, (_, until), state_raw in zip(ids, members, raw, strict=True):
        state = RiskState.decode(as_text(state_raw) if state_raw is not None else None)
        out.append(
            {
                "customer_id": cid,
                "points": churn_risk.points(state.items, now_us),
                "reasons": churn_risk.reasons(state.items, now_us),
                "at_risk_until": until,
            }
        )
    out.sort(key=lambda r: (-r["points"], r["customer_id"]))
    return out[:top] if top is not None else out
