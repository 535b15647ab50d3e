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
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from redis.cluster import RedisCluster as ClusterClient

from bench.reference_catalog import expected, make_stream
from schemas import TOPIC_FAMILY
from stream.devtools.servers import free_port
from stream.kafka.routing import home_partition
from stream.kafka.topics import create_topics, ensure_topics
from stream.store.keys import Keys
from stream.worker.repartition import Repartition
from tests.support.harness import (
    WorkerProcess,
    produce,
    scrape,
    settings_of,
    stack_env,
    stored_offsets,
    wait_for,
)
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


async def _send(bootstrap: str, messages: list[tuple[str, bytes, bytes]]) -> list[TopicPartition]:
    """Send (topic, key, value) in order with the default partitioner; the partition of each, in order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=1 << 20)
    await producer.start()
    try:
        futures = [await producer.send(t, value=v, key=k) for t, k, v in messages]
        return [TopicPartition(md.topic, md.partition) for md in [await f for f in futures]]
    finally:
        await producer.stop()


async def _log_ends(bootstrap: str, topic: str) -> dict[Any, int]:
    """Each partition's end offset as a fetch reports it (Tansu answers ListOffsets "latest" wrongly)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)

        async def known() -> bool:
            await consumer.getmany(timeout_ms=200, max_records=1)
            return all(consumer.highwater(tp) is not None for tp in tps)

        await wait_for(known, 60, f"the end offsets of {topic}")
        return {tp: consumer.highwater(tp) for tp in tps}
    finally:
        await consumer.stop()


def _home(event: dict[str, Any]) -> int:
    return home_partition(str(event.get("customer_id", event["event_id"])).encode(), PARTITIONS)


async def test_events_keyed_otherwise_meet_at_home_through_the_repartition_topic(
    kafka_bootstrap: str, cluster: RedisCluster, prefix: str, tmp_path: Path
) -> None:
    """Every event keyed by its event_id (a ticket opened and answered land on two partitions), and
    some redelivered under another key: the worker forwards each event read off its home partition
    through the repartition topic, and every series equals the reference. Forwards that a crashed
    worker left behind (acked by Kafka, their source offsets not yet in Redis: the next start
    forwards them again) and a SIGKILL mid-stream are absorbed by the home group's dedupe."""
    now = datetime.now(UTC)
    events, published = make_stream(20_000, seed=34, now=now, headroom_s=HEADROOM_S)
    env = _env(kafka_bootstrap, cluster.url, prefix)
    settings = settings_of(env)
    await create_topics(settings)
    rnd = random.Random(34)
    messages = [
        (settings.topic(TOPIC_FAMILY[e["type"]]), e["event_id"].encode(), json.dumps(e).encode()) for e in published
    ]
    homes = [_home(e) for e in published]
    for i in sorted(rnd.sample(range(len(messages)), len(messages) // 30), reverse=True):
        topic, key, value = messages[i]  # a redelivery under another key, some time after its original
        at = rnd.randrange(i + 1, len(messages) + 1)
        messages.insert(at, (topic, b"retry:" + key, value))
        homes.insert(at, homes[i])
    where = await _send(kafka_bootstrap, messages)
    ends: dict[Any, int] = {}
    for tp in where:
        ends[tp] = ends.get(tp, 0) + 1  # fresh topics: a partition's end is its record count
    off_home = [j for j, tp in enumerate(where) if tp.partition != homes[j]]
    assert len(off_home) > len(messages) // 2  # most customers' events are not on their home partition

    # What a worker killed between forwarding a batch and recording its offsets leaves behind: the
    # forwards are in the repartition topic, and the restarted worker reads the batch and forwards again.
    left = set(off_home[:500])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        offsets: dict[Any, int] = {}
        records = []
        for j, tp in enumerate(where):
            offsets[tp] = offsets.get(tp, -1) + 1
            if j in left:
                value = messages[j][2]
                record = SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=offsets[tp], value=value)
                event = json.loads(value)
                records.append((record, homes[j], str(event.get("customer_id", event["event_id"])).encode()))
        await Repartition(producer, settings.repartition_topic).send(records)
    finally:
        await producer.stop()

    client = aiocluster.RedisCluster.from_url(cluster.url)
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env, "worker", log).start()
    try:
        await wait_for(lambda: _at_least(client, prefix, 0.25 * len(messages)), 120, "25% applied")
        worker.kill()  # SIGKILL: between a forward and its batch's write, or anywhere else
        worker = WorkerProcess(env, "worker", log).start()
        await wait_for(lambda: _all_applied(client, prefix, ends), 240, "every event topic record applied")
        # Every forward was acked before its source offsets were recorded: all are in the topic now.
        forwarded = await _log_ends(kafka_bootstrap, settings.repartition_topic)
        assert sum(forwarded.values()) >= len(off_home) + len(left)
        await wait_for(lambda: _all_applied(client, prefix, forwarded), 240, "every forwarded record applied")
        ops = scrape(f"http://127.0.0.1:{env['CRM_KPI_WORKER_PORT']}/metrics")
        assert sum(v for (name, _), v in ops.items() if name == "crm_events_repartitioned_total") > 0
        assert ops[("crm_events_duplicate_total", ())] > 0
        _check(await _figures(env, tmp_path / "exporter.log"), events, now)
    finally:
        worker.stop()
        await client.aclose()


async def test_a_cluster_worker_refuses_topics_of_different_partition_counts(
    kafka_bootstrap: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """One ERROR line naming the odd topic, `crm_worker_misconfigured` 1, nothing consumed (Kafka is
    checked before Redis: a single Redis's URL is enough to reach the check)."""
    env = _env(kafka_bootstrap, redis_url, prefix)
    settings = settings_of(env)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.repartition_topic, 4, 1)])
    finally:
        await admin.close()
    assert (await ensure_topics(settings)).mismatched == {settings.repartition_topic: 4}
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env, "worker", log).start()
    url = f"http://127.0.0.1:{env['CRM_KPI_WORKER_PORT']}/metrics"

    async def misconfigured() -> bool:
        try:
            return scrape(url).get(("crm_worker_misconfigured", ())) == 1
        except OSError:
            return False

    try:
        await wait_for(misconfigured, 60, "crm_worker_misconfigured 1")
        line = (
            f"cannot start: with CRM_KPI_REDIS_CLUSTER the event topics and {settings.repartition_topic} need one "
            f"partition count, but {settings.repartition_topic} has 4 (the others {PARTITIONS}): "
            "see docs/runbooks.md#topic-partition-count-differs"
        )
        assert sum(line in text for text in log.read_text().splitlines()) == 1, log.read_text()[-3000:]
    finally:
        worker.stop()
