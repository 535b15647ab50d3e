"""The readers' side of Redis: the exporter's snapshot and `crm-kpi at-risk` (blocking client).

A snapshot is one Lua call (`lua/read.lua`) whatever the number of windows,
buckets and sorted sets, so a scrape costs one round trip.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.exceptions

from stream.events.windows import Window
from stream.kpis import DISTINCT_COUNTS, Current, KpiConfig, Totals, ZStat, churn_risk, sorted_set_queries
from stream.kpis.customers import AT_RISK, RISK, RiskState
from stream.kpis.registry import DISTINCT_CODE, REPEATED_CODE
from stream.store.keys import Keys
from stream.store.writer import as_text, lua_script

__all__ = ["Snapshot", "read_at_risk", "read_snapshot"]


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


def read_snapshot(
    client: redis.Redis,
    keys: Keys,
    windows: Sequence[Window],
    config: KpiConfig,
    now_s: float,
    future_skew_s: float,
) -> Snapshot:
    """Read all windows' summed counters and the current state in one Lua call.

    Each window's totals also carry its exact distinct counts (`DistinctCount`)
    and the current counters (`Totals.current`). `now_s` is unix seconds;
    buckets up to `future_skew_s` ahead are included (events may be that early).
    """
    queries = sorted_set_queries(now_s, config)
    argv: list[Any] = [len(windows)]
    for w in windows:
        argv += [
            keys.bucket_prefix(w.label),
            keys.distinct_prefix(w.label),
            w.first_bucket(now_s),
            w.last_bucket(now_s, future_skew_s),
        ]
    argv += [DISTINCT_CODE, REPEATED_CODE, len(DISTINCT_COUNTS)]
    argv += [d.name for d in DISTINCT_COUNTS]
    argv += [keys.current, len(queries)]
    for name, threshold in queries.items():
        argv += [keys.zset(name), repr(threshold)]
    reply = _evalsha_ro(client, [keys.current], argv)
    totals: dict[str, Totals] = {}
    for w, flat in zip(windows, reply, strict=False):
        totals[w.label] = Totals((as_text(flat[j]), int(float(flat[j + 1]))) for j in range(0, len(flat), 2))
    cur_flat = reply[len(windows)]
    counters = {as_text(cur_flat[j]): int(cur_flat[j + 1]) for j in range(0, len(cur_flat), 2)}
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
