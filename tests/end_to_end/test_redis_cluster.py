"""Exactness on a Redis Cluster (CRM_KPI_REDIS_CLUSTER=true): 3 masters with a replica each, on free ports.

Each partition group's keys share one hash tag, so the 12 groups of a 12-partition stream spread
over the masters while every batch write stays one atomic script per group. Through a worker
killed with SIGKILL, a master killed (its replica promoted), slots moved while the worker
writes (ASK redirects, TRYAGAIN) and three workers sharing the partitions, every series the
exporter serves must equal the independent reference's (bench/reference_catalog), and equal
what one worker on a single Redis serves.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
from redis.cluster import RedisCluster as ClusterClient

from bench.reference_catalog import expected, make_stream
from schemas import TOPIC_FAMILY
from stream.devtools.servers import free_port
from stream.kafka.topics import create_topics
from stream.store.keys import Keys
from tests.support.harness import WorkerProcess, produce, scrape, settings_of, stack_env, stored_offsets, wait_for
from tests.support.redis_cluster import RedisCluster
from tests.support.series import assert_series_match, kpi_series

pytestmark = pytest.mark.slow

HEADROOM_S = 900.0
PARTITIONS = 12


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster(masters=3, replicas=1) as c:
        yield c


def _env(kafka: str, redis_url: str, prefix: str, on_cluster: bool = True) -> dict[str, str]:
    # Small batches: many writes for a kill, a failover or a slot move to land between.
    extra = {"redis_cluster": "true"} if on_cluster else {}
    return stack_env(kafka, redis_url, prefix, topic_partitions=str(PARTITIONS), batch_max_records="500", **extra)


async def _publish(env: dict[str, str], events: list[dict[str, Any]]) -> dict[Any, int]:
    settings = settings_of(env)
    await create_topics(settings)
    return await produce(
        env["CRM_KPI_KAFKA_BOOTSTRAP_SERVERS"],
        [
            (
                settings.topic(TOPIC_FAMILY[e["type"]]),
                str(e.get("customer_id", e["event_id"])).encode(),
                json.dumps(e).encode(),
            )
            for e in events
        ],
    )


async def _progress(client: Any, prefix: str) -> int:
    """Records applied so far (-1 while the cluster cannot answer: a failover under way)."""
    try:
        return sum((await stored_offsets(client, prefix)).values())
    except (redis.RedisError, redis.exceptions.RedisClusterException, OSError):
        return -1


async def _all_applied(client: Any, prefix: str, ends: dict[Any, int]) -> bool:
    try:
        stored = await stored_offsets(client, prefix)
    except (redis.RedisError, redis.exceptions.RedisClusterException, OSError):
        return False
    return all(stored.get(f"{tp.topic}:{tp.partition}", -1) >= end for tp, end in ends.items())


async def _figures(env: dict[str, str], log: Path) -> dict[Any, float]:
    exporter = WorkerProcess(env, "exporter", log).start()
    url = f"http://127.0.0.1:{env['CRM_KPI_EXPORTER_PORT']}/metrics"
    try:

        async def up() -> bool:
            try:
                return ("crm_exporter_redis_up", ()) in scrape(url)
            except OSError:
                return False

        await wait_for(up, 30, "the exporter")
        return kpi_series(scrape(url))
    finally:
        exporter.stop()


def _check(got: dict[Any, float], events: list[dict[str, Any]], now: datetime) -> None:
    read_within = time.time() - now.timestamp()
    assert read_within <= HEADROOM_S, f"read {read_within:.0f}s after NOW: beyond the stream's {HEADROOM_S:.0f}s"
    assert_series_match(got, expected(events, now.timestamp()), read_within)


def _master_of_most_groups(cluster: RedisCluster, prefix: str) -> int:
    """The master holding the most partition groups, other than the node `CRM_KPI_REDIS_URL` names.

    The URL is the clients' only startup node here (no CRM_KPI_REDIS_CLUSTER_NODES): a worker or
    exporter (re)started while it is down could not load the slot map, so the test kills another
    master (tests/integration/store/test_redis_cluster.py covers more startup nodes).
    """
    client = ClusterClient.from_url(cluster.url)
    try:
        ports = [client.get_node_from_key(Keys(prefix).group(g).offsets).port for g in range(PARTITIONS)]
    finally:
        client.close()
    startup = urlsplit(cluster.url).port
    return max(set(ports) - {startup}, key=ports.count)


async def test_a_worker_killed_and_a_master_failing_over_lose_nothing(
    kafka_bootstrap: str, cluster: RedisCluster, prefix: str, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    events, published = make_stream(20_000, seed=31, now=now, headroom_s=HEADROOM_S)
    env = _env(kafka_bootstrap, cluster.url, prefix)
    ends = await _publish(env, published)
    total = sum(ends.values())
    client = aiocluster.RedisCluster.from_url(cluster.url)
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env, "worker", log).start()
    try:
        await wait_for(lambda: _at_least(client, prefix, 0.25 * total), 120, "25% applied")
        worker.kill()  # SIGKILL: mid-batch, between groups' writes, anywhere
        worker = WorkerProcess(env, "worker", log).start()
        await wait_for(lambda: _at_least(client, prefix, 0.5 * total), 120, "50% applied")
        victim = _master_of_most_groups(cluster, prefix)
        cluster.kill(victim)  # a master dies under the worker's writes; its replica takes over
        cluster.wait_failover()
        await client.aclose()
        client = aiocluster.RedisCluster.from_url(cluster.url)
        await wait_for(lambda: _all_applied(client, prefix, ends), 240, "every record applied")
        _check(await _figures(env, tmp_path / "exporter.log"), events, now)
    finally:
        worker.stop()
        await client.aclose()


async def _at_least(client: Any, prefix: str, n: float) -> bool:
    return await _progress(client, prefix) >= n


def _group_slot(cluster: RedisCluster, prefix: str, group: int) -> tuple[int, int]:
    """(slot, port of its master) of one partition group's keys."""
    client = ClusterClient.from_url(cluster.url)
    try:
        key = Keys(prefix).group(group).offsets
        return client.keyslot(key), client.get_node_from_key(key).port
    finally:
        client.close()


async def test_slots_moved_while_the_worker_writes_lose_nothing(
    kafka_bootstrap: str, cluster: RedisCluster, prefix: str, tmp_path: Path
) -> None:
    """A group's slot is migrated as `redis-cli --cluster reshard` does it, but held half-way: half
    its keys on each master. Every script for that group then meets TRYAGAIN or ASK, so the worker
    must retry (crm_redis_errors_total) until the slot settles on its new master, and lose nothing."""
    now = datetime.now(UTC)
    events, published = make_stream(40_000, seed=32, now=now, headroom_s=HEADROOM_S)
    env = _env(kafka_bootstrap, cluster.url, prefix)
    cut = len(published) // 5
    ends = await _publish(env, published[:cut])
    client = aiocluster.RedisCluster.from_url(cluster.url)
    worker = WorkerProcess(env, "worker", tmp_path / "worker.log").start()
    worker_url = f"http://127.0.0.1:{env['CRM_KPI_WORKER_PORT']}/metrics"

    def retried() -> float:
        return scrape(worker_url).get(("crm_redis_errors_total", ()), 0)

    async def retried_over(count: float) -> bool:
        return retried() > count

    try:
        await wait_for(lambda: _all_applied(client, prefix, ends), 120, "the first part applied")
        before = retried()
        slot, source = _group_slot(cluster, prefix, 0)
        target = next(p for p in cluster.master_ports() if p != source)
        await asyncio.to_thread(cluster.begin_migration, slot, source, target)
        publishing = asyncio.ensure_future(_publish(env, published[cut:]))  # partition 0 gets records too
        await wait_for(lambda: retried_over(before), 120, "the worker to meet the split slot and retry")
        await wait_for(lambda: retried_over(before + 1), 60, "a second retry while the slot stays split")
        await asyncio.to_thread(cluster.finish_migration, slot, source, target)
        ends = _later(ends, await publishing)
        await wait_for(lambda: _all_applied(client, prefix, ends), 240, "every record applied")
        assert _group_slot(cluster, prefix, 0)[1] == target
        _check(await _figures(env, tmp_path / "exporter.log"), events, now)
    finally:
        worker.stop()
        await client.aclose()


def _later(a: dict[Any, int], b: dict[Any, int]) -> dict[Any, int]:
    return {tp: max(a.get(tp, 0), b.get(tp, 0)) for tp in a.keys() | b.keys()}


async def test_three_workers_on_a_cluster_give_the_figures_of_one_worker_on_one_redis(
    kafka_bootstrap: str, redis_url: str, cluster: RedisCluster, prefix: str, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    events, published = make_stream(20_000, seed=33, now=now, headroom_s=HEADROOM_S)
    spread = _env(kafka_bootstrap, cluster.url, prefix)
    # The same topics, read by another consumer group into another key prefix on a single Redis.
    single = {
        **_env(kafka_bootstrap, redis_url, prefix + "one", on_cluster=False),
        "CRM_KPI_TOPIC_PREFIX": spread["CRM_KPI_TOPIC_PREFIX"],
    }
    ends = await _publish(spread, published)
    on_cluster = aiocluster.RedisCluster.from_url(cluster.url)
    on_one = aioredis.Redis.from_url(redis_url)
    envs = [{**spread, "CRM_KPI_WORKER_PORT": str(free_port())} for _ in range(3)]  # one /metrics port each
    workers = [WorkerProcess(e, "worker", tmp_path / f"worker{i}.log").start() for i, e in enumerate(envs)]
    workers.append(WorkerProcess(single, "worker", tmp_path / "single.log").start())
    try:
        await wait_for(lambda: _all_applied(on_cluster, prefix, ends), 240, "every record applied on the cluster")
        await wait_for(lambda: _all_applied(on_one, prefix + "one", ends), 240, "every record applied on one Redis")
        # Each equal to the reference, series for series (read at its own instant: ages move on).
        _check(await _figures(spread, tmp_path / "exporter.log"), events, now)
        _check(await _figures(single, tmp_path / "exporter-single.log"), events, now)
    finally:
        for w in workers:
            w.stop()
        await on_cluster.aclose()
        await on_one.aclose()
