"""Redis I/O: the batch read, the atomic batch write, and the exporter's read.

Each batch costs two round trips whatever its size: one pipelined read
(dedupe look-up and entity states) and one Lua call that re-checks and writes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import orjson
import redis
import redis.asyncio as aioredis

from stream.aggregate import BatchDelta
from stream.keys import Keys
from stream.kpis import DISTINCT_NAMES, UNPRUNED_ZSETS, Current, KpiConfig, Totals, ZStat, zset_queries
from stream.windows import Window

__all__ = [
    "ApplyOutcome",
    "AsyncStore",
    "Snapshot",
    "dedupe_slots",
    "event_digest",
    "read_snapshot",
]

# The dedupe horizon is cut into this many processing-time slots: memory is
# bounded by horizon × (1 + 1/SLOTS) of event ids.
_DEDUPE_SLOTS = 8


def _script(name: str) -> str:
    return resources.files("stream").joinpath(f"lua/{name}").read_text()


def event_digest(event_id: str) -> bytes:
    """16-byte digest of an event id: what the dedupe sets store (fixed size, ~56 B/id)."""
    return hashlib.blake2b(event_id.encode(), digest_size=16).digest()


def dedupe_slots(now_s: float, horizon_s: float) -> tuple[int, list[int], int]:
    """(slot to add to, live slots to check, expiry of the current slot in unix s)."""
    width = horizon_s / _DEDUPE_SLOTS
    current = math.floor(now_s / width)
    first = math.floor((now_s - horizon_s) / width)
    return current, list(range(first, current + 1)), math.ceil((current + 1) * width + horizon_s)


@dataclass(frozen=True)
class ApplyOutcome:
    """Result of the atomic write: applied, or refused and why."""

    ok: bool
    conflict: str = ""  # 'offset' | 'duplicate' | 'entity'
    detail: str = ""


class AsyncStore:
    """The worker's side of Redis."""

    def __init__(self, client: aioredis.Redis, keys: Keys, dedupe_horizon_s: float, state_ttl_s: float) -> None:
        self.client = client
        self.keys = keys
        self.dedupe_horizon_s = dedupe_horizon_s
        self.state_ttl_s = state_ttl_s
        self._apply = client.register_script(_script("apply.lua"))

    async def load_offsets(self, fields: Iterable[str]) -> dict[str, int]:
        """Next offset to apply per 'topic:partition' field, for those Redis knows."""
        fields = list(fields)
        if not fields:
            return {}
        values = await self.client.hmget(self.keys.offsets, fields)
        return {f: int(v) for f, v in zip(fields, values, strict=True) if v is not None}

    async def read_states(self, entity_keys: Sequence[str]) -> dict[str, str | None]:
        """The raw states of these entities (None when absent); no round trip for none."""
        if not entity_keys:
            return {}
        values = cast(list[bytes | None], await self.client.mget(list(entity_keys)))
        return {k: (v.decode() if v is not None else None) for k, v in zip(entity_keys, values, strict=True)}

    async def apply(
        self,
        delta: BatchDelta,
        offsets: Sequence[tuple[str, int, int]],
        digests: Sequence[bytes],
        now_s: float,
    ) -> ApplyOutcome:
        """Atomically: fence offsets (field, expected or -1, new), dedupe, write the delta.

        Refused with conflict 'duplicate' and detail = the 1-based indexes of the
        digests already recorded (a duplicate from an earlier batch or another worker).
        """
        current, slots, dd_expire = dedupe_slots(now_s, self.dedupe_horizon_s)
        argv: list[Any] = [len(offsets)]
        for name, expected, new in offsets:
            argv += [name, expected, new]
        argv += [self.keys.dedupe(current), dd_expire, len(slots)]
        argv += [self.keys.dedupe(s) for s in slots]
        argv.append(b"".join(digests))
        argv.append(self.encode_delta(delta, now_s))
        reply = await self._apply(keys=[self.keys.offsets], args=argv)
        status = _text(reply[0])
        if status == "ok":
            return ApplyOutcome(True)
        return ApplyOutcome(False, status, " ".join(_text(x) for x in reply[1:]))

    def encode_delta(self, delta: BatchDelta, now_s: float) -> bytes:
        """The delta as one JSON document for apply.lua (cjson), built by orjson in C.

        One argument instead of one per counter: redis-py packs arguments in
        Python, which cost more than the fold itself for large batches. Integers
        beyond ±2^53 travel as strings, since Lua numbers are doubles.
        """
        keys, ttl_ms = self.keys, int(self.state_ttl_s * 1000)
        persistent = delta.persistent
        # Entities holding open "current" figures (an unpaid invoice, an open deal, a
        # backlog ticket) outlive the TTL, or their closing event could not retract them.
        entities = [
            [key, old or "", new, 0 if key in persistent else ttl_ms]
            for key, (old, new) in delta.entity_writes.items()
        ]
        buckets = [
            [keys.bucket(label, bucket), delta.expire_at[(label, bucket)], _exact(fields)]
            for (label, bucket), fields in delta.buckets.items()
        ]
        distinct = [
            [keys.distinct(label, bucket, name), delta.expire_at[(label, bucket)], _exact(counts)]
            for (label, bucket, name), counts in delta.distinct.items()
        ]
        zsets = sorted({z for z, _ in delta.zadd} - UNPRUNED_ZSETS)
        return orjson.dumps(
            {
                "entities": entities,
                "buckets": buckets,
                "distinct": distinct,
                "current": [keys.current, _exact({k: v for k, v in delta.counters.items() if v})],
                "zadd": [[keys.zset(z), member, repr(score)] for (z, member), score in delta.zadd.items()],
                "zrem": [[keys.zset(z), member] for z, member in delta.zrem],
                "prune": [[keys.zset(z), repr(now_s - self.state_ttl_s)] for z in zsets],
            }
        )


_LUA_EXACT = 2**53


def _exact(values: dict[str, int]) -> dict[str, int | str]:
    """`values` with integers a Lua double cannot hold exactly turned into strings."""
    if not values or (max(values.values()) < _LUA_EXACT and min(values.values()) > -_LUA_EXACT):
        return values  # type: ignore[return-value]
    return {k: v if -_LUA_EXACT < v < _LUA_EXACT else str(v) for k, v in values.items()}


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Snapshot:
    """Everything the KPI read-outs need: per-window totals and the current state."""

    windows: dict[str, Totals]
    current: Current


_read_script: dict[int, Any] = {}


def read_snapshot(
    client: redis.Redis,
    keys: Keys,
    windows: Sequence[Window],
    sla: Mapping[str, float],
    now_s: float,
    future_skew_s: float,
    config: KpiConfig | None = None,
) -> Snapshot:
    """Read all windows' summed counters and the current state in one Lua call (sync).

    Each window's totals also carry its exact distinct counts (`Field.distinct`,
    `Field.repeat`) and the current counters (`Totals.current`).
    """
    if config is None:
        from stream.aggregate import settings_config

        config = settings_config()
    script = _read_script.get(id(client))
    if script is None:
        script = _read_script[id(client)] = client.register_script(_script("read.lua"))
    queries = zset_queries(now_s, sla)
    argv: list[Any] = [len(windows)]
    for w in windows:
        argv += [
            keys.bucket_prefix(w.label),
            keys.distinct_prefix(w.label),
            w.first_bucket(now_s),
            w.last_bucket(now_s, future_skew_s),
        ]
    argv.append(len(DISTINCT_NAMES))
    argv += DISTINCT_NAMES
    argv += [keys.current, len(queries)]
    for name, threshold in queries.items():
        argv += [keys.zset(name), repr(threshold)]
    reply = script(keys=[keys.current], args=argv)
    totals: dict[str, Totals] = {}
    for w, flat in zip(windows, reply, strict=False):
        totals[w.label] = Totals((_text(flat[j]), int(float(flat[j + 1]))) for j in range(0, len(flat), 2))
    cur_flat = reply[len(windows)]
    counters = {_text(cur_flat[j]): int(cur_flat[j + 1]) for j in range(0, len(cur_flat), 2)}
    for t in totals.values():
        t.current = counters
    zstats: dict[str, ZStat] = {}
    for name, (size, below, lowest) in zip(queries, reply[len(windows) + 1 :], strict=True):
        low = _text(lowest)
        zstats[name] = ZStat(int(size), int(below), float(low) if low else None)
    return Snapshot(totals, Current(counters, zstats, now_s, dict(sla), totals, config.stages))


def read_at_risk(client: redis.Redis, keys: Keys, now_s: float, top: int | None = None) -> list[dict[str, Any]]:
    """Customers at churn risk now (SPEC §5.2), highest points first: id, points, reasons, until.

    The at-risk set holds each customer scored by the moment they fall under the
    threshold; points and reasons are recomputed at `now_s` from the stored items.
    """
    from stream import churn_risk
    from stream.joins import RiskState
    from stream.kpis import Field

    members: list[tuple[Any, float]] = client.zrangebyscore(  # type: ignore[assignment]
        keys.zset(Field.AT_RISK), f"({now_s!r}", "+inf", withscores=True
    )
    if not members:
        return []
    ids = [_text(m) for m, _ in members]
    raw = client.mget([keys.entity("rk", c) for c in ids])
    now_us = int(now_s * 1_000_000)
    out: list[dict[str, Any]] = []
    for cid, (_, until), state_raw in zip(ids, members, raw, strict=True):
        state = RiskState.decode(_text(state_raw) if state_raw is not None else None)
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
