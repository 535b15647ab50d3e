"""The worker's side of Redis: the batch read and the atomic batch write.

Each batch costs two round trips whatever its size: one read of entity states
(`lua/states.lua`) and one Lua call (`lua/apply.lua`) that checks the offset
fence, the dedupe sets and the entity states read, then writes the whole delta.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from stream.events.fold import BatchDelta
from stream.kpis import UNPRUNED_SORTED_SETS
from stream.store.keys import Keys

__all__ = ["ApplyOutcome", "AsyncStore", "as_text", "dedupe_slots", "event_digest", "lua_script"]

# The dedupe horizon is cut into this many processing-time slots: memory is
# bounded by horizon × (1 + 1/SLOTS) of event ids.
_DEDUPE_SLOTS = 8


def lua_script(name: str) -> str:
    """The text of one of the Lua scripts shipped in `stream/store/lua/`."""
    return resources.files("stream.store").joinpath(f"lua/{name}").read_text()


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
        self._apply = client.register_script(lua_script("apply.lua"))
        self._states = client.register_script(lua_script("states.lua"))

    async def load_offsets(self, fields: Iterable[str]) -> dict[str, int]:
        """Next offset to apply per 'topic:partition' field, for those Redis knows."""
        fields = list(fields)
        if not fields:
            return {}
        values = await self.client.hmget(self.keys.offsets, fields)
        return {f: int(v) for f, v in zip(fields, values, strict=True) if v is not None}

    async def read_states(self, entity_keys: Sequence[str]) -> dict[str, str | None]:
        """The raw states of these entities (None when absent); no round trip for none.

        One script call with the keys as one JSON argument (lua/states.lua), not an
        MGET with one argument per key: packing those cost ~1 µs a key in the client.
        """
        if not entity_keys:
            return {}
        values = cast(
            list[bytes | None], await self._states(keys=[self.keys.offsets], args=[orjson.dumps(list(entity_keys))])
        )
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
        status = as_text(reply[0])
        if status == "ok":
            return ApplyOutcome(True)
        return ApplyOutcome(False, status, " ".join(as_text(x) for x in reply[1:]))

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
        names = {z for z, _ in delta.zadd}
        zsets = sorted(names - UNPRUNED_SORTED_SETS)
        zkey = {z: keys.zset(z) for z in names.union(z for z, _ in delta.zrem)}  # a handful of sets, many members
        return orjson.dumps(
            {
                "entities": entities,
                "buckets": buckets,
                "distinct": distinct,
                "current": [keys.current, _exact({k: v for k, v in delta.counters.items() if v})],
                "zadd": [[zkey[z], member, repr(score)] for (z, member), score in delta.zadd.items()],
                "zrem": [[zkey[z], member] for z, member in delta.zrem],
                "prune": [[zkey[z], repr(now_s - self.state_ttl_s)] for z in zsets],
            }
        )


_LUA_EXACT = 2**53


def _exact(values: dict[str, int]) -> dict[str, int | str]:
    """`values` with integers a Lua double cannot hold exactly turned into strings."""
    if not values or (max(values.values()) < _LUA_EXACT and min(values.values()) > -_LUA_EXACT):
        return values  # type: ignore[return-value]
    return {k: v if -_LUA_EXACT < v < _LUA_EXACT else str(v) for k, v in values.items()}


def as_text(value: Any) -> str:
    """A Redis reply item as text (bytes decoded, numbers formatted)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
