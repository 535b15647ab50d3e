"""The worker's side of Redis: the batch read and the atomic batch write.

Each partition group of a batch (the records of the Kafka partitions whose keys share
one hash tag: `stream.store.keys`) costs two round trips whatever its size: one read
(`lua/states.lua`) of the entity states and of which event-id digests are already
recorded, so the fold leaves redeliveries out; and one Lua call (`lua/apply.lua`) that
checks the offset fence, the dedupe sets (again: an id recorded since the read is
refused) and the entity states read, then writes the whole delta. The groups of a
batch are written concurrently, each atomically; atomic per group is what the fence
needs, since offsets are per partition.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import orjson
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from stream.events.fold import BatchDelta
from stream.kpis import UNPRUNED_SORTED_SETS
from stream.store.connection import AsyncClient
from stream.store.keys import BUCKET_TOKEN_FIELD, Keys

__all__ = [
    "ApplyOutcome",
    "AsyncStore",
    "BatchRead",
    "LogMark",
    "as_text",
    "dedupe_slots",
    "lua_script",
]

# The dedupe horizon is cut into this many processing-time slots: memory is
# bounded by horizon × (1 + 1/SLOTS) of event ids.
_DEDUPE_SLOTS = 8


def lua_script(name: str) -> str:
    """The text of one of the Lua scripts shipped in `stream/store/lua/`."""
    return resources.files("stream.store").joinpath(f"lua/{name}").read_text()


def dedupe_slots(now_s: float, horizon_s: float) -> tuple[int, list[int], int]:
    """(slot to add to, live slots to check, expiry of the current slot in unix s).

    Slots are `horizon_s / 8` wide in processing time (unix s). A slot is live while any of
    it lies within `horizon_s` of `now_s`, and its key expires exactly when it stops being
    live, so a digest is checked for between `horizon_s` and `horizon_s × 9/8` after it was
    recorded. The batch read (`AsyncStore.read_batch`) and the atomic write both check the
    slots this returns.
    """
    width = horizon_s / _DEDUPE_SLOTS
    current = math.floor(now_s / width)
    first = math.floor((now_s - horizon_s) / width)
    return current, list(range(first, current + 1)), math.ceil((current + 1) * width + horizon_s)


@dataclass(frozen=True)
class ApplyOutcome:
    """Result of the atomic write: applied, or refused and why."""

    ok: bool
    conflict: str = ""  # 'offset' | 'gap' | 'duplicate' | 'entity'
    detail: str = ""


@dataclass(frozen=True)
class BatchRead:
    """What one batch's read before its fold returned (`AsyncStore.read_batch`)."""

    states: dict[str, str | None]
    """Raw state per entity key asked for; None when Redis holds none."""
    recorded: frozenset[int]
    """0-based indexes, into the digests asked about, of those already recorded in a live dedupe slot."""


@dataclass(frozen=True)
class LogMark:
    """What Redis records about one partition: where to resume, and which log that offset belongs to."""

    next: int | None
    """Next offset to apply; None when Redis holds none (a new deployment, or a Redis that lost it)."""
    last: str | None
    """Fingerprint of the last record applied (`stream.worker.logcheck.Fingerprint`), if recorded."""


def _by_group(keys: Keys, fields: Iterable[str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    for f in fields:
        out[keys.group_of(f)].append(f)
    return out


class AsyncStore:
    """The worker's side of Redis (a single Redis or a Redis Cluster: the calls are the same).

    Offsets fields are 'topic:partition'; each is kept in its partition group's keys.
    """

    def __init__(self, client: AsyncClient, keys: Keys, dedupe_horizon_s: float, state_ttl_s: float) -> None:
        self.client = client
        self.keys = keys
        self.dedupe_horizon_s = dedupe_horizon_s
        self.state_ttl_s = state_ttl_s
        self._apply = client.register_script(lua_script("apply.lua"))
        self._anchor = client.register_script(lua_script("anchor.lua"))
        self._marks = client.register_script(lua_script("marks.lua"))
        self._states = client.register_script(lua_script("states.lua"))
        self._slot_map_loaded = False

    async def _concurrent(self, *calls: Any) -> list[Any]:
        """Await calls to several partition groups concurrently.

        A cluster client loads its slot map on first use; several first calls at once had it
        replace connections under each other, so it is loaded before the first concurrent calls.
        """
        if not self._slot_map_loaded:
            if isinstance(self.client, AsyncRedisCluster):
                await self.client.initialize()
            self._slot_map_loaded = True
        return list(await asyncio.gather(*calls))

    async def load_offsets(self, fields: Iterable[str]) -> dict[str, int]:
        """Next offset to apply per 'topic:partition' field, for those Redis knows."""
        groups = _by_group(self.keys, fields)
        if not groups:
            return {}
        replies = await self._concurrent(
            *(self.client.hmget(self.keys.group(g).offsets, fs) for g, fs in groups.items())
        )
        return {
            f: int(v)
            for fs, values in zip(groups.values(), replies, strict=True)
            for f, v in zip(fs, values, strict=True)
            if v is not None
        }

    async def load_marks(self, fields: Iterable[str]) -> dict[str, LogMark]:
        """Offset and last-record fingerprint per 'topic:partition' field, read in one atomic step."""
        groups = _by_group(self.keys, fields)
        if not groups:
            return {}
        replies = await self._concurrent(
            *(
                self._marks(keys=[self.keys.group(g).offsets, self.keys.group(g).log_marks], args=fs)
                for g, fs in groups.items()
            )
        )
        out: dict[str, LogMark] = {}
        for fs, (offsets, marks) in zip(groups.values(), replies, strict=True):
            for f, o, m in zip(fs, offsets, marks, strict=True):
                out[f] = LogMark(int(o) if o is not None else None, as_text(m) if m is not None else None)
        return out

    async def register(self, groups: Iterable[int]) -> None:
        """Add partition groups to the registry readers read (idempotent; called on every resync).

        Not part of the batch write: on a cluster the registry is another slot. A worker
        registers its groups before it applies anything to them, and again every resync,
        so a registry lost with a node is written back within a second (the offsets check).
        """
        members = sorted(set(groups))
        if members:
            await self.client.sadd(self.keys.registry, *members)

    async def registered_groups(self) -> list[int]:
        """The partition groups in the registry, in order."""
        return sorted(int(g) for g in await self.client.smembers(self.keys.registry))

    async def anchor(
        self, field: str, expected: int | None, new: int | None, mark: str | None = None, lost: int = 0
    ) -> tuple[bool, int | None]:
        """Set one partition's applied offset to `new` (None: delete it) if it still is `expected`.

        The fingerprint is replaced by `mark` (None: deleted); `lost` > 0 adds that many records
        to the partition's gap (`load_gaps`). Returns (done, the offset Redis held).
        """
        keys = self.keys.group(self.keys.group_of(field))
        await self.register([keys.partition])
        reply = await self._anchor(
            keys=[keys.offsets, keys.log_marks, keys.gaps],
            args=[field, _or_absent(expected), _or_absent(new), mark or "", lost, f"{time.time():.3f}"],
        )
        held = int(reply[1])
        return as_text(reply[0]) == "ok", (held if held >= 0 else None)

    async def load_gaps(self, fields: Iterable[str] | None = None) -> dict[str, tuple[int, float]]:
        """Records the KPIs are known to miss per field, and when the latest were lost (unix s)."""
        items: list[tuple[str, Any]] = []
        if fields is None:
            groups = await self.registered_groups()
            raws = await self._concurrent(*(self.client.hgetall(self.keys.group(g).gaps) for g in groups))
            items = [(as_text(k), v) for raw in raws for k, v in raw.items()]
        else:
            by_group = _by_group(self.keys, fields)
            if not by_group:
                return {}
            replies = await self._concurrent(
                *(self.client.hmget(self.keys.group(g).gaps, fs) for g, fs in by_group.items())
            )
            for fs, values in zip(by_group.values(), replies, strict=True):
                items += zip(fs, values, strict=True)
        out: dict[str, tuple[int, float]] = {}
        for field, value in items:
            if value is None:
                continue
            records, _, since = as_text(value).partition(":")
            out[field] = (int(records), float(since or 0))
        return out

    async def read_states(self, group: int, entity_keys: Sequence[str]) -> dict[str, str | None]:
        """The raw states of these entities of partition group `group` (None when absent); no round trip for none."""
        return (await self.read_batch(group, entity_keys, (), time.time())).states

    async def read_batch(
        self, group: int, entity_keys: Sequence[str], digests: Sequence[bytes], now_s: float
    ) -> BatchRead:
        """One partition group's read before its fold: entity states, and which digests are already recorded.

        `digests` are 16-byte `stream.events.event_digest`s; `now_s` (unix s) picks the live dedupe slots
        exactly as `apply` does, so a digest reported here is one `apply` would refuse (unless
        its slot expires in between: it is still a repeat within the horizon). A digest
        recorded after this read is still refused by `apply`. No round trip when both are
        empty. One script call (lua/states.lua) with the keys as one JSON argument and the
        digests as one blob, not an MGET with one argument per key: packing those cost
        ~1 µs a key in the client.
        """
        if not entity_keys and not digests:
            return BatchRead({}, frozenset())
        keys = self.keys.group(group)
        args: list[Any] = [orjson.dumps(list(entity_keys)), b"".join(digests)]
        if digests:
            _, slots, _ = dedupe_slots(now_s, self.dedupe_horizon_s)
            args += [keys.dedupe(s) for s in slots]
        values, recorded = cast(
            tuple[list[bytes | None], list[int]], await self._states(keys=[keys.offsets], args=args)
        )
        states = {k: (v.decode() if v is not None else None) for k, v in zip(entity_keys, values, strict=True)}
        return BatchRead(states, frozenset(i - 1 for i in recorded))

    async def apply(
        self,
        group: int,
        delta: BatchDelta,
        offsets: Sequence[tuple[str, int, int]],
        digests: Sequence[bytes],
        now_s: float,
        firsts: Mapping[str, int] | None = None,
        marks: Mapping[str, str] | None = None,
    ) -> ApplyOutcome:
        """Atomically in partition group `group`: fence offsets (field, expected or -1, new), dedupe, write the delta.

        Every offsets field must belong to `group`, and the delta's entity keys too (the fold
        builds them with that group's `Keys.entity_prefix`).

        `firsts` gives the offset each partition's batch starts at (default: the expected one);
        where Redis holds an offset, the batch must start exactly there, else it is refused
        with conflict 'gap' and detail "field stored first". `marks` fingerprints the last
        record of each partition's batch. Refused with conflict 'offset' and detail "field
        stored" when Redis holds another offset than expected ('-1': none), and with conflict
        'duplicate' and detail = the 1-based indexes of the digests already recorded (a
        duplicate from an earlier batch or another worker).
        """
        keys = self.keys.group(group)
        current, slots, dd_expire = dedupe_slots(now_s, self.dedupe_horizon_s)
        argv: list[Any] = [len(offsets)]
        for name, expected, new in offsets:
            first = firsts.get(name, expected) if firsts is not None else expected
            argv += [name, expected, first, new, marks.get(name, "") if marks is not None else ""]
        argv += [keys.dedupe(current), dd_expire, len(slots)]
        argv += [keys.dedupe(s) for s in slots]
        argv.append(b"".join(digests))
        argv.append(self.encode_delta(delta, now_s, keys))
        reply = await self._apply(keys=[keys.offsets, keys.log_marks], args=argv)
        status = as_text(reply[0])
        if status == "ok":
            return ApplyOutcome(True)
        return ApplyOutcome(False, status, " ".join(as_text(x) for x in reply[1:]))

    def encode_delta(self, delta: BatchDelta, now_s: float, keys: Keys | None = None) -> bytes:
        """The delta as one JSON document for apply.lua (cjson), built by orjson in C.

        One argument instead of one per counter: redis-py packs arguments in
        Python, which cost more than the fold itself for large batches. Integers
        beyond ±2^53 travel as strings, since Lua numbers are doubles.
        """
        keys, ttl_ms = keys or self.keys, int(self.state_ttl_s * 1000)
        persistent = delta.persistent
        # Entities holding open "current" figures (an unpaid invoice, an open deal, a
        # backlog ticket) outlive the TTL, or their closing event could not retract them.
        entities = [
            [key, old or "", new, 0 if key in persistent else ttl_ms] for key, (old, new) in delta.entity_writes.items()
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
                "token": [BUCKET_TOKEN_FIELD, _batch_token()],
                "entities": entities,
                "buckets": buckets,
                "distinct": distinct,
                "current": [keys.current, _exact({k: v for k, v in delta.counters.items() if v})],
                "zadd": [[zkey[z], member, repr(score)] for (z, member), score in delta.zadd.items()],
                "zrem": [[zkey[z], member] for z, member in delta.zrem],
                "prune": [[zkey[z], repr(now_s - self.state_ttl_s)] for z in zsets],
            }
        )


_TOKENS = itertools.count()


def _batch_token() -> str:
    """Unique per batch across processes and restarts: time (ns), pid, a counter."""
    return f"{time.time_ns():x}.{os.getpid():x}.{next(_TOKENS):x}"


_LUA_EXACT = 2**53


def _exact(values: dict[str, int]) -> dict[str, int | str]:
    """`values` with integers a Lua double cannot hold exactly turned into strings."""
    if not values or (max(values.values()) < _LUA_EXACT and min(values.values()) > -_LUA_EXACT):
        return values  # type: ignore[return-value]
    return {k: v if -_LUA_EXACT < v < _LUA_EXACT else str(v) for k, v in values.items()}


def _or_absent(offset: int | None) -> int:
    return -1 if offset is None else offset


def as_text(value: Any) -> str:
    """A Redis reply item as text (bytes decoded, numbers formatted)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
