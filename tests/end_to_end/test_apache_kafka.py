"""The product on Apache Kafka (the production broker), not only on the embedded Tansu broker.

The broker is `tests/support/apache_kafka.py` (jars from `.ci/fetch-kafka.sh`). Each test
publishes a stream whose figures an independent model (tests/oracle.py) computes, runs a
real `crm-kpi worker` and exporter, and compares what the exporter serves, exactly.
Producers: aiokafka (the product's client), librdkafka through confluent-kafka, and kcat.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.reference import assert_matches, expected, make_stream
from stream.kafka.topics import create_topics
from tests.support.apache_kafka import ApacheKafka, KafkaUnavailable, kafka_libs
from tests.support.harness import (
    ROOT,
    WorkerProcess,
    applied,
    end_offsets,
    exporter_figures,
    messages,
    produce,
    read_topic,
    required_tool,
    scrape,
    scrape_when_up,
    seed_of,
    settings_of,
    stack_env,
    stored_offsets,
    wait_for,
)

Message = tuple[str, bytes, bytes]


@dataclass
class _Published:
    """A seeded core stream for one test, on its own topics (created) and keys."""

    now: datetime
    events: list[dict[str, Any]]  # unique
    published: list[dict[str, Any]]  # with the producer retries
    env: dict[str, str]


async def _stream(kafka: ApacheKafka, redis_url: str, prefix: str, n: int, seed: int) -> _Published:
    now = datetime.now(UTC)
    events, published = make_stream(n, seed=seed_of(seed), now=now)
    env = stack_env(kafka.bootstrap, redis_url, prefix, topic_partitions="3")
    await create_topics(settings_of(env))
    return _Published(now, events, published, env)


async def _count_and_check(
    stream: _Published, client: aioredis.Redis, ends: dict[TopicPartition, int], tmp_path: Path
) -> None:
    """Run a worker over the published stream; the exporter's and the worker's figures must be exact."""
    env, events, published = stream.env, stream.events, stream.published
    assert sum(ends.values()) == len(published), "every published record must be in the log once"
    worker = WorkerProcess(env, "worker", tmp_path / "worker.log").start()
    try:
        await wait_for(lambda: applied(client, env["CRM_KPI_REDIS_KEY_PREFIX"], ends), 120, "every record applied")
        assert_matches(await exporter_figures(env, tmp_path / "exporter.log"), expected(events, stream.now))
        ops = scrape(f"http://127.0.0.1:{env['CRM_KPI_WORKER_PORT']}/metrics")
        for kind, n in Counter(e["type"] for e in events).items():
            assert ops[("crm_events_processed_total", (("type", kind),))] == n, kind
        assert ops[("crm_events_duplicate_total", ())] == len(published) - len(events)
        assert ops.get(("crm_events_invalid_total", (("reason", "invalid_fields"),)), 0) == 0
    finally:
        assert worker.stop() == 0, "the worker must exit cleanly on SIGTERM"


# --- the fixture itself ----------------------------------------------------------------


async def _create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


def test_compose_runs_the_version_the_tests_run() -> None:
    """docker-compose.yml's apache/kafka image is the version .ci/kafka/pom.xml fetches."""
    pom = (ROOT / ".ci" / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    image = re.search(r"image:\s*apache/kafka:(\S+)", (ROOT / "docker-compose.yml").read_text())
    assert version and image
    assert image[1] == version[1]


def test_missing_jars_say_how_to_fetch_them(tmp_path: Path) -> None:
    with pytest.raises(KafkaUnavailable, match=r"\.ci/fetch-kafka\.sh"):
        kafka_libs(tmp_path)
    with pytest.raises(KafkaUnavailable, match=r"\.ci/fetch-kafka\.sh"):
        ApacheKafka(libs=tmp_path / "nothing-here")


async def test_restart_keeps_the_log_and_wipe_loses_it(apache_kafka_factory: Callable[..., ApacheKafka]) -> None:
    """kill + restart: every acknowledged record is back; wipe: the topic is gone, re-created empty.

    The records are read back through a second listener: extra listeners keep their ports too.
    """
    kafka = apache_kafka_factory(partitions=2, listeners={"EXTERNAL": "PLAINTEXT"})
    assert kafka.address("EXTERNAL") != kafka.bootstrap
    print(f"broker start: {kafka.startup_seconds:.1f}s")
    await _create_topic(kafka.bootstrap, "kept", 2)
    records = [("kept", f"k{i}".encode(), f"v{i}".encode()) for i in range(500)]
    ends = await produce(kafka.bootstrap, records)
    assert sum(ends.values()) == 500

    await asyncio.to_thread(kafka.restart)
    print(f"restart after SIGKILL: {kafka.startup_seconds:.1f}s")
    assert await end_offsets(kafka.bootstrap, ["kept"], empty=False) == ends
    got = await read_topic(kafka.address("EXTERNAL"), "kept", 500)
    assert sorted(r.value for r in got) == sorted(v for _, _, v in records)

    cluster = kafka.cluster_id
    await asyncio.to_thread(kafka.wipe)
    print(f"restart with an empty log: {kafka.startup_seconds:.1f}s")
    assert kafka.cluster_id == cluster
    assert "kept" not in kafka.metadata().topics
    await _create_topic(kafka.bootstrap, "kept", 2)
    assert await end_offsets(kafka.bootstrap, ["kept"], empty=False) == {}


# --- the product on Apache Kafka ---------------------------------------------------------


async def test_topics_create_makes_the_configured_partitions(
    apache_kafka: ApacheKafka, redis_url: str, prefix: str
) -> None:
    env = stack_env(apache_kafka.bootstrap, redis_url, prefix, topic_partitions="3")
    settings = settings_of(env)
    names = [*settings.event_topics(), settings.dead_letter_topic, settings.repartition_topic]

    def topics_create() -> str:
        run = subprocess.run(
            [sys.executable, "-m", "stream", "topics", "create"],
            env={**os.environ, **env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        return run.stdout

    assert f"created {len(names)} topic(s)" in await asyncio.to_thread(topics_create)
    assert "created 0 topic(s)" in await asyncio.to_thread(topics_create)

    admin = AIOKafkaAdminClient(bootstrap_servers=apache_kafka.bootstrap)
    await admin.start()
    try:
        described = {t["topic"]: t for t in await admin.describe_topics(names)}
    finally:
        await admin.close()
    assert set(described) == set(names)
    for name, topic in described.items():
        assert topic["error_code"] == 0, name
        assert sorted(p["partition"] for p in topic["partitions"]) == [0, 1, 2], name
        assert all(p["leader"] == 1 and p["error_code"] == 0 for p in topic["partitions"]), name


async def test_core_kpis_are_exact_on_apache_kafka(
    apache_kafka: ApacheKafka, redis_url: str, redis: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    stream = await _stream(apache_kafka, redis_url, prefix, 600, seed=21)
    ends = await produce(apache_kafka.bootstrap, messages(stream.env, stream.published))
    await _count_and_check(stream, redis, ends, tmp_path)


def _confluent_produce(bootstrap: str, messages: list[Message]) -> dict[TopicPartition, int]:
    """Publish with librdkafka (idempotent, acks=all, Java's key partitioner); end offset per partition."""
    from confluent_kafka import KafkaError, Producer
    from confluent_kafka import Message as Delivered

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "partitioner": "murmur2_random",  # the partitioner Java clients and aiokafka use
            "client.id": "crm-kpi-tests-librdkafka",
        }
    )
    ends: dict[TopicPartition, int] = {}
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, message: Delivered) -> None:
        if error is not None:
            errors.append(error)
            return
        tp = TopicPartition(message.topic(), message.partition())
        ends[tp] = max(ends.get(tp, 0), message.offset() + 1)

    for topic, key, value in messages:
        producer.produce(topic, value=value, key=key, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(60) == 0, "librdkafka could not deliver every message in 60 s"
    assert errors == []
    return ends


async def test_confluent_kafka_producer_is_counted_exactly(
    apache_kafka: ApacheKafka, redis_url: str, redis: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    stream = await _stream(apache_kafka, redis_url, prefix, 800, seed=22)
    records = messages(stream.env, stream.published)
    ends = await asyncio.to_thread(_confluent_produce, apache_kafka.bootstrap, records)
    assert ends == await end_offsets(apache_kafka.bootstrap, settings_of(stream.env).event_topics(), empty=False)
    await _count_and_check(stream, redis, ends, tmp_path)


def _kcat_produce(kcat: str, bootstrap: str, topic: str, messages: list[Message]) -> None:
    """Publish one topic's messages with kcat (librdkafka's CLI): idempotent, acks=all."""
    # One record a line, "key<TAB>value" (JSON has neither raw tabs nor newlines).
    lines = b"".join(key + b"\t" + value + b"\n" for _, key, value in messages)
    options = ["acks=all", "enable.idempotence=true", "partitioner=murmur2_random"]
    run = subprocess.run(
        [kcat, "-P", "-b", bootstrap, "-t", topic, "-K", "\\t", *(x for o in options for x in ("-X", o))],
        input=lines,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")


async def test_kcat_producer_is_counted_exactly(
    apache_kafka: ApacheKafka, redis_url: str, redis: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    kcat = required_tool("kcat", "kcat")
    stream = await _stream(apache_kafka, redis_url, prefix, 400, seed=23)
    by_topic: dict[str, list[Message]] = {}
    for message in messages(stream.env, stream.published):
        by_topic.setdefault(message[0], []).append(message)
    for topic, records in by_topic.items():
        await asyncio.to_thread(_kcat_produce, kcat, apache_kafka.bootstrap, topic, records)
    ends = await end_offsets(apache_kafka.bootstrap, settings_of(stream.env).event_topics(), empty=False)
    await _count_and_check(stream, redis, ends, tmp_path)


# --- crashes on Apache Kafka ---------------------------------------------------------------


async def _progress(client: aioredis.Redis, prefix: str) -> int:
    """Records applied so far, summed over partitions (from the worker's offset records in Redis)."""
    return sum((await stored_offsets(client, prefix)).values())


@pytest.mark.slow
async def test_worker_and_broker_crashes_mid_stream_count_every_event_once(
    apache_kafka_factory: Callable[..., ApacheKafka],
    redis_url: str,
    redis: aioredis.Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    """Worker SIGKILLed, broker SIGKILLed and restarted, worker SIGKILLed again: exact figures at the end."""
    kafka = apache_kafka_factory()
    seed = seed_of()
    rnd = random.Random(seed)
    now = datetime.now(UTC)
    events, published = make_stream(30_000, seed=seed, now=now)
    # Small batches: many Redis writes and commits for each crash to land between.
    env = stack_env(kafka.bootstrap, redis_url, prefix, topic_partitions="4", batch_max_records="500")
    await create_topics(settings_of(env))
    ends = await produce(kafka.bootstrap, messages(env, published))
    total = sum(ends.values())
    assert total == len(published)
    log = tmp_path / "worker.log"
    # Crash points, as fractions of the stream applied: worker, broker, worker again.
    marks = [rnd.uniform(0.1, 0.3), rnd.uniform(0.4, 0.55), rnd.uniform(0.7, 0.85)]
    print(f"crash points (fraction applied): worker {marks[0]:.2f}, broker {marks[1]:.2f}, worker {marks[2]:.2f}")

    async def consumed_to(fraction: float, what: str) -> None:
        """Wait until `fraction` of the stream is applied, and some of it by the worker running now.

        A crash must hit a worker that is consuming, not one still connecting.
        """
        before = await _progress(redis, prefix)

        async def reached() -> bool:
            done = await _progress(redis, prefix)
            # Everything applied already (the worker before got to the end before its crash)
            # leaves nothing to crash into: the figures are still checked at the end.
            return (done > before or done >= total) and done >= fraction * total

        await wait_for(reached, 120, f"{fraction:.0%} applied {what} (seed {seed})")

    worker = WorkerProcess(env, "worker", log).start()
    try:
        await consumed_to(marks[0], "by the first worker")
        worker.kill()
        worker = WorkerProcess(env, "worker", log).start()
        await consumed_to(marks[1], "by the second worker")
        await asyncio.to_thread(kafka.restart)  # SIGKILL, then the same node on the same ports and log
        print(f"broker back after SIGKILL in {kafka.startup_seconds:.1f}s")
        await consumed_to(marks[2], "after the broker crash")
        assert worker.proc is not None and worker.proc.poll() is None, f"the worker died with the broker (seed {seed})"
        worker.kill()
        worker = WorkerProcess(env, "worker", log).start()
        await wait_for(lambda: applied(redis, prefix, ends), 180, f"every record applied (seed {seed})")
        assert_matches(await exporter_figures(env, tmp_path / "exporter.log"), expected(events, now))
        # The last worker may find every record applied already (the one before it got to the
        # end before its kill): its /metrics can still be starting.
        worker_url = f"http://127.0.0.1:{env['CRM_KPI_WORKER_PORT']}/metrics"
        ops = await scrape_when_up(worker_url, 60, f"the last worker to serve /metrics (seed {seed})")
        assert ops.get(("crm_events_invalid_total", (("reason", "invalid_fields"),)), 0) == 0
    finally:
        worker.stop()
