"""The atomic batch write (store.apply + apply.lua) against a real Redis."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from stream.events.fold import BatchDelta
from stream.store import AsyncStore, Keys, event_digest
from stream.store.keys import BUCKET_TOKEN_FIELD
from stream.store.writer import dedupe_slots

BIG = 2**60 + 1  # beyond a Lua double's exact integers


def _delta(keys: Keys) -> BatchDelta:
    d = BatchDelta()
    now = time.time()
    d.buckets[("1h", 100)] = {"wamt|EUR": BIG, "n|deal.won": 3, "neg": -(2**55) - 3}
    d.expire_at[("1h", 100)] = int(time.time()) + 3600
    d.distinct[("1h", 100, "users")] = {"u1": 2, "u|2": 1}
    d.counters = {"pipe|EUR": BIG, "zero": 0}
    d.entity_writes = {keys.entity("t", "a"): (None, "1|x"), keys.entity("d", "b"): (None, "2|y")}
    d.persistent = {keys.entity("d", "b")}
    d.zadd = {("aw|high", "a"): now + 0.5, ("aw|high", "old"): 1234.5}
    return d


async def test_big_integers_and_every_part_land_exactly(redis: aioredis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    store = AsyncStore(redis, keys, dedupe_horizon_s=3600, state_ttl_s=60)
    out = await store.apply(_delta(keys), [("crm.deals:0", "-1", 7)], [event_digest("e1")], time.time())
    assert out.ok, out
    bucket = keys.bucket("1h", 100)
    assert int(await redis.hget(bucket, "wamt|EUR")) == BIG
    assert int(await redis.hget(bucket, "neg")) == -(2**55) - 3
    assert await redis.ttl(bucket) > 3000
    members = await redis.hgetall(keys.distinct("1h", 100, "users"))
    token = members.pop(BUCKET_TOKEN_FIELD.encode())  # the batch's token, for the exporter's cache
    assert members == {b"u1": b"2", b"u|2": b"1"}
    assert await redis.hget(bucket, BUCKET_TOKEN_FIELD) == token
    assert int(await redis.hget(keys.current, "pipe|EUR")) == BIG
    assert await redis.hget(keys.current, "zero") is None  # zero deltas are not sent
    assert await redis.get(keys.entity("t", "a")) == b"1|x"
    assert 0 < await redis.pttl(keys.entity("t", "a")) <= 60_000
    assert await redis.pttl(keys.entity("d", "b")) == -1  # open current state outlives the TTL
    assert await redis.zscore(keys.zset("aw|high"), "a") > time.time() - 60
    assert await redis.zscore(keys.zset("aw|high"), "old") is None  # older than the state TTL: pruned
    assert await redis.hget(keys.offsets, "crm.deals:0") == b"7"

    # The same batch again: the offset fence refuses it, nothing changes.
    again = await store.apply(_delta(keys), [("crm.deals:0", "-1", 7)], [event_digest("e2")], time.time())
    assert (again.ok, again.conflict, again.detail) == (False, "offset", "crm.deals:0 7")
    assert int(await redis.hget(bucket, "wamt|EUR")) == BIG


async def test_a_refused_batch_writes_nothing(redis: aioredis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    store = AsyncStore(redis, keys, dedupe_horizon_s=3600, state_ttl_s=60)
    first = BatchDelta()
    assert (await store.apply(first, [("crm.leads:0", "-1", 1)], [event_digest("e1")], time.time())).ok

    dup = await store.apply(
        _delta(keys), [("crm.leads:0", "1", 3)], [event_digest("e0"), event_digest("e1")], time.time()
    )
    assert (dup.ok, dup.conflict, dup.detail) == (False, "duplicate", "2")

    await redis.set(keys.entity("t", "a"), "changed by another worker")
    conflict = await store.apply(_delta(keys), [("crm.leads:0", "1", 3)], [event_digest("e0")], time.time())
    assert (conflict.ok, conflict.conflict) == (False, "entity")
    assert await redis.exists(keys.bucket("1h", 100), keys.entity("d", "b"), keys.current) == 0
    assert await redis.hget(keys.offsets, "crm.leads:0") == b"1"
    _, live, _ = dedupe_slots(time.time(), 3600)
    for slot in live:
        assert not await redis.sismember(keys.dedupe(slot), event_digest("e0"))
    assert any([await redis.sismember(keys.dedupe(slot), event_digest("e1")) for slot in live])
