"""The readers' side of Redis: the exporter's snapshot and `crm-kpi at-risk` (blocking client).

A snapshot is one Lua call (`lua/read.lua`) whatever the number of windows,
buckets and sorted sets, so a scrape costs one round trip; with a `ReadCache`
it also transfers and sums only the buckets written since the last read.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.exceptions

from stream.events.windows import Window
from stream.kpis import DISTINCT_COUNTS, Current, KpiConfig, Totals, ZStat, churn_risk, sorted_set_queries
from stream.kpis.customers import AT_RISK, RISK, RiskState
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


class _Held:
    """The hashes of one kind (a window's buckets, or one distinct count's) a reader holds, by bucket."""

    def __init__(self) -> None:
        self.hashes: dict[int, tuple[str, dict[str, int]]] = {}

    def _apply(self, fields: dict[str, int], sign: int) -> None:
        raise NotImplementedError

    def add(self, bucket: int, token: str, fields: dict[str, int]) -> None:
        if bucket in self.hashes:
            self.drop(bucket)
        self.hashes[bucket] = (token, fields)
        self._apply(fields, 1)

    def drop(self, bucket: int) -> None:
        _, fields = self.hashes.pop(bucket)
        self._apply(fields, -1)

    def keep(self, first: int, last: int) -> None:
        """Forget the buckets that slid out of [first, last]."""
        for bucket in [b for b in self.hashes if not first <= b <= last]:
            self.drop(bucket)

    def held(self) -> list[Any]:
        """n, then the (bucket, token) pairs: what read.lua compares with Redis."""
        out: list[Any] = [len(self.hashes)]
        for bucket, (token, _) in self.hashes.items():
            out += [bucket, token]
        return out

    def update(self, reply: Sequence[Any]) -> None:
        """Apply read.lua's {fetched, gone} for this kind."""
        fetched, gone = reply
        for bucket in gone:
            self.drop(int(bucket))
        for j in range(0, len(fetched), 3):
            flat = fetched[j + 2]
            names = map(as_text, flat[0::2])
            fields = {n: int(v) for n, v in zip(names, flat[1::2], strict=True) if n != BUCKET_TOKEN_FIELD}
            self.add(int(fetched[j]), as_text(fetched[j + 1]), fields)


class _WindowSums(_Held):
    """A window's summed counters; a field stays while at least one held bucket has it."""

    def __init__(self) -> None:
        super().__init__()
        self.sums: dict[str, int] = {}
        self.present: dict[str, int] = {}

    def _apply(self, fields: dict[str, int], sign: int) -> None:
        sums, present = self.sums, self.present
        for name, value in fields.items():
            left = present.get(name, 0) + sign
            if left:
                present[name] = left
                sums[name] = sums.get(name, 0) + sign * value
            else:
                del present[name], sums[name]


class _DistinctSums(_Held):
    """An exact distinct count over a window: members' summed counts, and how many reach 1 and 2."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self.distinct = 0
        self.repeated = 0

    def _apply(self, fields: dict[str, int], sign: int) -> None:
        counts = self.counts
        for member, by in fields.items():
            old = counts.get(member, 0)
            new = old + sign * by
            self.distinct += (new >= 1) - (old >= 1)
            self.repeated += (new >= 2) - (old >= 2)
            if new:
                counts[member] = new
            else:
                del counts[member]


class ReadCache:
    """The window sums and distinct members a long-lived reader (the exporter) keeps between reads.

    Each read sends the (bucket, token) pairs held; Redis answers with the hashes
    whose token changed (every batch that writes a bucket sets a new token,
    `BUCKET_TOKEN_FIELD`) and those that vanished, and the sums are updated by
    difference. Figures are exactly those of a full read - a restored or rolled-back
    Redis shows other tokens, so its buckets are read again - while a scrape costs the
    hashes that changed instead of every field of every bucket of every window.
    """

    def __init__(self) -> None:
        self.windows: dict[str, _WindowSums] = {}
        self.distinct: dict[tuple[str, str], _DistinctSums] = {}
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
    held: list[tuple[_WindowSums, list[_DistinctSums]]] = []
    argv: list[Any] = [BUCKET_TOKEN_FIELD, len(windows)]
    for w in windows:
        first, last = w.first_bucket(now_s), w.last_bucket(now_s, future_skew_s)
        sums = cache.windows.setdefault(w.label, _WindowSums())
        sums.keep(first, last)
        argv += [keys.bucket_prefix(w.label), keys.distinct_prefix(w.label), first, last, *sums.held()]
        argv.append(len(DISTINCT_COUNTS))
        members: list[_DistinctSums] = []
        for d in DISTINCT_COUNTS:
            seen = cache.distinct.setdefault((w.label, d.name), _DistinctSums())
            seen.keep(first, last)
            argv += [d.name, *seen.held()]
            members.append(seen)
        held.append((sums, members))
    argv += [keys.current, len(queries)]
    for name, threshold in queries.items():
        argv += [keys.zset(name), repr(threshold)]
    reply = _evalsha_ro(client, [keys.current], argv)
    totals: dict[str, Totals] = {}
    for w, (sums, members), window_reply in zip(windows, held, reply, strict=False):
        sums.update(window_reply[0])
        window = Totals(sums.sums)
        for d, seen, distinct_reply in zip(DISTINCT_COUNTS, members, window_reply[1:], strict=True):
            seen.update(distinct_reply)
            window[d.distinct_field] = seen.distinct
            window[d.repeated_field] = seen.repeated
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
