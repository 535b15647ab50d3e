"""The consumer's step hands its Redis calls to the socket before its CPU-bound phases.

A batch's decode and fold hold the event loop for tens of milliseconds; a read or
write still inside redis-py by then would reach Redis only afterwards. Real
redis-server (single and Cluster), the worker's own client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from stream.settings import Settings
from stream.store.connection import async_client, sync_client
from stream.worker import consumer
from tests.support.config import clean_settings
from tests.support.redis_cluster import RedisCluster

_DELTA_SIZED = b"x" * 800_000  # about a realistic batch's write (0.5-0.8 MB of JSON)


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with RedisCluster(masters=3) as cluster:
        yield cluster.url


def _arrived(settings: Settings, key: str, timeout_s: float = 5.0) -> bool:
    """Whether Redis holds `key` within `timeout_s`, asked by a blocking client (the event loop stays blocked)."""
    client = sync_client(settings)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if client.exists(key):
                return True
        return False
    finally:
        client.close()


async def _sent_while_blocked(settings: Settings, key: str) -> bool:
    client = async_client(settings)
    try:
        await client.set(key, b"")  # connected to the key's node, as a running worker's client is
        await client.delete(key)
        write = asyncio.ensure_future(client.set(key, _DELTA_SIZED))
        await consumer._let_sends_out()
        # What the step does next: CPU work that never yields. The write must be at Redis already.
        arrived = _arrived(settings, key)
        await write
        return arrived
    finally:
        await client.aclose()


@pytest.mark.parametrize("mode", ["single", "cluster"])
async def test_a_write_started_by_the_step_reaches_redis_before_the_next_cpu_phase(
    mode: str, redis_url: str, prefix: str, request: pytest.FixtureRequest
) -> None:
    if mode == "single":
        settings = clean_settings(redis_url=redis_url, redis_key_prefix=prefix)
    else:
        settings = clean_settings(
            redis_url=request.getfixturevalue("cluster_url"), redis_key_prefix=prefix, redis_cluster=True
        )
    assert await _sent_while_blocked(settings, f"{prefix}:write")


async def test_without_the_rounds_the_write_waits_for_the_loop(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: with one round, redis-py is still on its way to the socket."""
    monkeypatch.setattr(consumer, "_SEND_ROUNDS", 1)
    settings = clean_settings(redis_url=redis_url, redis_key_prefix=prefix)
    client = async_client(settings)
    try:
        await client.set(f"{prefix}:write", b"")
        await client.delete(f"{prefix}:write")
        write = asyncio.ensure_future(client.set(f"{prefix}:write", _DELTA_SIZED))
        await consumer._let_sends_out()
        assert not _arrived(settings, f"{prefix}:write", timeout_s=0.5)
        await write
    finally:
        await client.aclose()
