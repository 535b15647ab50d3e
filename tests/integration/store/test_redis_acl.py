"""The Redis ACLs docs/security.md lists are enough, and the exporter's is read-only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
import redis.asyncio as aioredis
import redis.exceptions

from stream.events import event_digest
from stream.events.fold import BatchDelta
from stream.events.windows import make_windows
from stream.kpis.activity import USERS
from stream.kpis.customers import AT_RISK, EVER_ACQUIRED
from stream.kpis.event_counts import events_of
from stream.kpis.support import AWAITING_RESPONSE
from stream.store import AsyncStore, Keys, read_at_risk, read_snapshot
from tests.support.config import kpi_config
from tests.support.harness import ROOT

# As docs/security.md lists them, for the default key prefix `crm`.
WORKER_ACL = (
    "resetkeys ~{crm:* resetchannels -@all +evalsha +script|load +hmget +smembers +mget +exists +zcard "
    "+get +set +hget +hset +hincrby +hdel +sadd +smismember +expireat +zadd +zrem +zremrangebyscore"
)
EXPORTER_ACL = (
    "resetkeys %R~{crm:* resetchannels -@all +evalsha_ro +script|load +smembers +mget +hget +hgetall +exists "
    "+zcard +zcount +zrange +zrangebyscore"
)
LEADS_CREATED = events_of("lead.created")


def test_the_docs_list_these_acls() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    assert f"ACL SETUSER crm-kpi-worker on >WORKER_PASSWORD {WORKER_ACL}" in text
    assert f"ACL SETUSER crm-kpi-exporter on >EXPORTER_PASSWORD {EXPORTER_ACL}" in text


def _user_url(base: str, user: str, password: str) -> str:
    parts = urlsplit(base)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{user}:{password}@{host}", parts.path, parts.query, parts.fragment))


@pytest.fixture
def users(redis_url: str, prefix: str) -> Iterator[tuple[str, str]]:
    """(worker URL, exporter URL) of two ACL users restricted to this test's key prefix."""
    admin = redis.Redis.from_url(redis_url)
    names = (f"{prefix}-worker", f"{prefix}-exporter")
    for name, rules in zip(names, (WORKER_ACL, EXPORTER_ACL), strict=True):
        admin.execute_command("ACL", "SETUSER", name, "on", ">secret", *rules.replace("{crm:", f"{{{prefix}:").split())
    try:
        yield _user_url(redis_url, names[0], "secret"), _user_url(redis_url, names[1], "secret")
    finally:
        for name in names:
            admin.execute_command("ACL", "DELUSER", name)
        admin.close()


def _delta(keys: Keys, now: float, member_delta: int) -> BatchDelta:
    """A delta touching every kind of write apply.lua makes."""
    d = BatchDelta()
    bucket = int(now // 60)
    d.buckets[("1h", bucket)] = {LEADS_CREATED.code: 1}
    d.expire_at[("1h", bucket)] = int(now) + 3600
    d.distinct[("1h", bucket, USERS.name)] = {"u1": member_delta}
    d.counters = {EVER_ACQUIRED.code: 1}
    d.entity_writes = {
        keys.entity("t", f"a{member_delta}"): (None, "1|x"),
        keys.entity("d", f"b{member_delta}"): (None, "2"),
    }
    d.persistent = {keys.entity("d", f"b{member_delta}")}
    d.zadd = {(AWAITING_RESPONSE.of("high").name, "t1"): now, (AT_RISK.name, "c1"): now + 3600}
    d.zrem = {(AWAITING_RESPONSE.of("low").name, "t0")}
    return d


async def test_worker_and_exporter_work_with_their_acls(users: tuple[str, str], prefix: str) -> None:
    worker_url, exporter_url = users
    keys = Keys(prefix)
    now = time.time()
    worker = aioredis.Redis.from_url(worker_url)
    try:
        store = AsyncStore(worker, keys, dedupe_horizon_s=3600, state_ttl_s=60)
        assert await store.load_offsets(["crm.leads:0"]) == {}
        await store.register([0])  # what the worker does on every resync
        assert await store.read_states(0, [keys.entity("t", "a1")]) == {keys.entity("t", "a1"): None}
        first = await store.apply(0, _delta(keys, now, 1), [("crm.leads:0", "-1", 5)], [event_digest("e1")], now)
        assert first.ok, first
        # A retraction that empties a distinct count (HDEL), then a duplicate refused (SMISMEMBER).
        second = await store.apply(0, _delta(keys, now, -1), [("crm.leads:0", "5", 9)], [event_digest("e2")], now)
        assert second.ok, second
        dup = await store.apply(0, BatchDelta(), [("crm.leads:0", "9", 10)], [event_digest("e1")], now)
        assert (dup.ok, dup.conflict) == (False, "duplicate")
        assert await store.load_offsets(["crm.leads:0"]) == {"crm.leads:0": 9}
        with pytest.raises(redis.exceptions.NoPermissionError):
            await worker.get("someone-else:key")
    finally:
        await worker.aclose()

    exporter = redis.Redis.from_url(exporter_url)
    try:
        snap = read_snapshot(exporter, keys, make_windows([3600.0]), kpi_config(), time.time(), 300.0)
        assert LEADS_CREATED.of(snap.windows["1h"]) == 2
        assert EVER_ACQUIRED.of(snap.current.counters) == 2
        assert [r["customer_id"] for r in read_at_risk(exporter, keys, time.time())] == ["c1"]
        with pytest.raises(redis.exceptions.NoPermissionError):
            exporter.set(keys.current, "x")
        # Read-only three times over: its keys are read-only (%R~), it may run scripts only
        # with EVALSHA_RO (which refuses writes), and it may run no write command.
        sha = exporter.script_load("return redis.call('HSET', KEYS[1], 'f', '1')")
        refused = r"(?i)write commands are not allowed|permission|can.t run this command"
        with pytest.raises(redis.exceptions.ResponseError, match=refused):
            exporter.evalsha_ro(sha, 1, keys.current)
        with pytest.raises(redis.exceptions.NoPermissionError):
            exporter.evalsha(sha, 1, keys.current)
    finally:
        exporter.close()
