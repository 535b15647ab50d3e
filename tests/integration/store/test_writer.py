"""The atomic batch write (store.apply + apply.lua) against a real Redis."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from stream.events import event_digest
from stream.events.fold import BatchDelta
from stream.store import AsyncStore, Keys, LogMark
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
    out = await store.apply(0, _delta(keys), [("crm.deals:0", "-1", 7)], [event_digest("e1")], time.time())
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
    again = await store.apply(0, _delta(keys), [("crm.deals:0", "-1", 7)], [event_digest("e2")], time.time())
    assert (again.ok, again.conflict, again.detail) == (False, "offset", "crm.deals:0 7")
    assert int(await redis.hget(bucket, "wamt|EUR")) == BIG


async def test_a_refused_batch_writes_nothing(redis: aioredis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    store = AsyncStore(redis, keys, dedupe_horizon_s=3600, state_ttl_s=60)
    first = BatchDelta()
    assert (await store.apply(0, first, [("crm.leads:0", "-1", 1)], [event_digest("e1")], time.time())).ok

    dup = await store.apply(
        0,
        _delta(keys), [("crm.leads:0", "1", 3)], [event_digest("e0"), event_digest("e1")], time.time()
    )
    assert (dup.ok, dup.conflict, dup.detail) == (False, "duplicate", "2")

    await redis.set(keys.entity("t", "a"), "changed by another worker")
    conflict = await store.apply(0, _delta(keys), [("crm.leads:0", "1", 3)], [event_digest("e0")], time.time())
    assert (conflict.ok, conflict.conflict) == (False, "entity")
    assert await redis.exists(keys.bucket("1h", 100), keys.entity("d", "b"), keys.current) == 0
    assert await redis.hget(keys.offsets, "crm.leads:0") == b"1"
    _, live, _ = dedupe_slots(time.time(), 3600)
    for slot in live:
        assert not await redis.sismember(keys.dedupe(slot), event_digest("e0"))
    assert any([await redis.sismember(keys.dedupe(slot), event_digest("e1")) for slot in live])


async def test_the_fence_refuses_a_batch_that_does_not_start_at_the_stored_offset(
    redis: aioredis.Redis, prefix: str
) -> None:
    """A gap (a batch starting past the stored offset) is refused like a wrong expectation; nothing is written."""
    keys = Keys(prefix)
    store = AsyncStore(redis, keys, dedupe_horizon_s=3600, state_ttl_s=60)
    first = await store.apply(
        0,
        BatchDelta(),
        [("crm.leads:0", -1, 10)],
        [event_digest("e1")],
        time.time(),
        {"crm.leads:0": 0},
        {"crm.leads:0": "9:1:ab"},
    )
    assert first.ok, first
    assert await redis.hget(keys.log_marks, "crm.leads:0") == b"9:1:ab"

    gap = await store.apply(
        0,
        _delta(keys), [("crm.leads:0", 10, 20)], [event_digest("e2")], time.time(), {"crm.leads:0": 12}
    )
    assert (gap.ok, gap.conflict, gap.detail) == (False, "gap", "crm.leads:0 10 12")
    assert await redis.hget(keys.offsets, "crm.leads:0") == b"10"
    assert await redis.exists(keys.bucket("1h", 100), keys.current) == 0

    # Starting exactly at the stored offset, with records below it skipped by the caller: applied.
    ok = await store.apply(
        0,
        BatchDelta(),
        [("crm.leads:0", 10, 20)],
        [event_digest("e2")],
        time.time(),
        {"crm.leads:0": 10},
        {"crm.leads:0": "19:2:cd"},
    )
    assert ok.ok, ok
    assert (await store.load_marks(["crm.leads:0", "crm.leads:1"])) == {
        "crm.leads:0": LogMark(20, "19:2:cd"),
        "crm.leads:1": LogMark(None, None),
    }


async def test_anchor_is_a_compare_and_set_and_adds_to_the_gap(redis: aioredis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    store = AsyncStore(redis, keys, dedupe_horizon_s=3600, state_ttl_s=60)
    assert await store.anchor("crm.deals:1", None, 5, None, 5) == (True, None)  # none stored -> 5
    assert await store.anchor("crm.deals:1", None, 7) == (False, 5)  # Redis holds 5, not none: refused
    await redis.hset(keys.log_marks, "crm.deals:1", "4:1:ff")
    assert await store.anchor("crm.deals:1", 5, 9, None, 4) == (True, 5)
    assert await store.load_marks(["crm.deals:1"]) == {"crm.deals:1": LogMark(9, None)}  # the old mark is gone
    records, since = (await store.load_gaps(["crm.deals:1"]))["crm.deals:1"]
    assert records == 9 and abs(since - time.time()) < 60
    assert await store.load_gaps() == await store.load_gaps(["crm.deals:1", "crm.deals:2"])
    assert await store.anchor("crm.deals:1", 9, None) == (True, 9)  # delete
    assert await redis.hget(keys.offsets, "crm.deals:1") is None


async def test_the_worker_acl_covers_the_fence_the_marks_and_the_anchor(redis_url: str, prefix: str) -> None:
    """docs/configuration.md's worker ACL (no transactions) is enough for every offset call of the worker."""
    import redis as sync_redis

    from tests.integration.store.test_redis_acl import WORKER_ACL, _user_url

    admin = sync_redis.Redis.from_url(redis_url)
    name = f"{prefix}-fence"
    admin.execute_command(
        "ACL", "SETUSER", name, "on", ">secret", *WORKER_ACL.replace("{crm:", f"{{{prefix}:").split()
    )
    client = aioredis.Redis.from_url(_user_url(redis_url, name, "secret"))
    try:
        store = AsyncStore(client, Keys(prefix), dedupe_horizon_s=3600, state_ttl_s=60)
        assert (await store.anchor("crm.leads:0", None, 3, None, 3))[0]
        out = await store.apply(
            0,
            BatchDelta(),
            [("crm.leads:0", 3, 5)],
            [event_digest("x")],
            time.time(),
            {"crm.leads:0": 3},
            {"crm.leads:0": "4:0:00"},
        )
        assert out.ok, out
        assert await store.load_marks(["crm.leads:0"]) == {"crm.leads:0": LogMark(5, "4:0:00")}
        assert await store.load_gaps(["crm.leads:0"]) == {"crm.leads:0": (3, pytest.approx(time.time(), abs=60))}
        assert await store.load_offsets(["crm.leads:0"]) == {"crm.leads:0": 5}
    finally:
        await client.aclose()
        admin.execute_command("ACL", "DELUSER", name)
        admin.close()
