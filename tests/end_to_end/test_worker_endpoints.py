"""What the worker and the exporter tell operators: /health, per-partition progress, build info, scrape errors."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from stream.build_info import VERSION
from stream.devtools.servers import free_port, start_redis
from stream.kafka.topics import create_topics
from tests.support.harness import (
    WorkerProcess,
    applied,
    produce,
    scrape,
    scrape_when_up,
    settings_of,
    stack_env,
    wait_for,
)

pytestmark = pytest.mark.slow


def _health(port: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def _tickets(first: int, count: int) -> list[dict[str, Any]]:
    at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return [
        {"event_id": f"h{i}", "type": "ticket.opened", "occurred_at": at, "ticket_id": f"T{i}", "customer_id": "c1"}
        for i in range(first, first + count)
    ]


async def test_health_fails_while_the_worker_is_stuck_behind(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    own_redis = start_redis(durable=True)  # this test takes it away, then brings it back as it was
    env = stack_env(kafka_bootstrap, own_redis.url, prefix, topic_partitions="1", worker_stall_timeout="3s")
    settings = settings_of(env)
    await create_topics(settings)
    topic = settings.topic("tickets")
    client = aioredis.Redis.from_url(own_redis.url)
    worker = WorkerProcess(env, "worker", tmp_path / "worker.log").start()
    port = env["CRM_KPI_WORKER_PORT"]
    try:
        ends = await produce(kafka_bootstrap, [(topic, b"c1", json.dumps(e).encode()) for e in _tickets(0, 50)])
        await wait_for(lambda: applied(client, prefix, ends), 90, "the worker to apply the first records")

        async def status(code: int) -> bool:
            return _health(port)[0] == code

        await wait_for(lambda: status(200), 30, "/health 200 while caught up")
        own_redis.kill()  # the worker pauses and retries; new records wait
        await produce(kafka_bootstrap, [(topic, b"c1", json.dumps(e).encode()) for e in _tickets(50, 50)])
        await wait_for(lambda: status(503), 60, "/health 503 while stuck behind")
        _, detail = _health(port)
        assert detail["status"] == "stalled" and detail["lag"] > 0 and detail["seconds_since_progress"] >= 3, detail
        own_redis.restart()
        await wait_for(lambda: status(200), 90, "/health 200 once it caught up again")
    finally:
        worker.stop()
        await client.aclose()
        own_redis.stop()


async def test_worker_exports_committed_offsets_and_newest_event_times_per_partition(
    kafka_bootstrap: str, redis_url: str, redis: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    from aiokafka import AIOKafkaProducer, TopicPartition

    env = stack_env(kafka_bootstrap, redis_url, prefix, topic_partitions="2")
    settings = settings_of(env)
    await create_topics(settings)
    topic = settings.topic("tickets")
    worker = WorkerProcess(env, "worker", tmp_path / "worker.log").start()
    url = f"http://127.0.0.1:{env['CRM_KPI_WORKER_PORT']}/metrics"
    try:
        before = await scrape_when_up(url, 60, "the worker's /metrics")
        names = {name for name, _ in before}
        # Before any event: no lag figure that would read 0, no per-partition series.
        assert not names & {
            "crm_event_lag_seconds",
            "crm_kafka_newest_event_timestamp_seconds",
            "crm_kafka_committed_offset",
        }
        assert ("crm_kpi_build_info", (("python", _python()), ("version", VERSION))) in before

        newest = {0: "2026-01-05T09:00:00+00:00", 1: "2026-01-05T10:30:00+00:00"}
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        ends: dict[TopicPartition, int] = {}
        try:
            for p, last in newest.items():
                for i, at in enumerate(("2026-01-05T08:00:00+00:00", last, "2026-01-05T08:30:00+00:00")):
                    event = {
                        "event_id": f"n{p}{i}",
                        "type": "ticket.opened",
                        "occurred_at": at,
                        "ticket_id": f"T{p}{i}",
                        "customer_id": f"c{p}",
                    }
                    md = await producer.send_and_wait(topic, json.dumps(event).encode(), key=b"k", partition=p)
                    ends[TopicPartition(md.topic, md.partition)] = md.offset + 1
        finally:
            await producer.stop()
        await wait_for(lambda: applied(redis, prefix, ends), 60, "the worker to apply the events")

        async def committed() -> bool:
            samples = scrape(url)
            return all(
                samples.get(("crm_kafka_committed_offset", (("partition", str(tp.partition)), ("topic", topic)))) == end
                for tp, end in ends.items()
            )

        await wait_for(committed, 30, "the committed offsets per partition")
        samples = scrape(url)
        for p, at in newest.items():
            key = ("crm_kafka_newest_event_timestamp_seconds", (("partition", str(p)), ("topic", topic)))
            assert samples[key] == datetime.fromisoformat(at).timestamp()
        lag = samples[("crm_event_lag_seconds", ())]
        assert lag >= datetime.now(UTC).timestamp() - datetime.fromisoformat(newest[1]).timestamp() - 5
    finally:
        worker.stop()


async def test_exporter_counts_failed_scrapes_and_says_its_version(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there: every Redis read fails
    env = {"CRM_KPI_REDIS_URL": f"redis://127.0.0.1:{dead}/0", "CRM_KPI_EXPORTER_PORT": str(free_port())}
    exporter = WorkerProcess(env, "exporter", tmp_path / "exporter.log").start()
    url = f"http://127.0.0.1:{env['CRM_KPI_EXPORTER_PORT']}/metrics"
    try:
        first = await scrape_when_up(url, 30, "the exporter")
        second = scrape(url)
        key = ("crm_exporter_scrape_errors_total", ())
        assert first[key] >= 1 and second[key] == first[key] + 1
        assert second[("crm_exporter_redis_up", ())] == 0
        assert ("crm_kpi_build_info", (("python", _python()), ("version", VERSION))) in second
    finally:
        exporter.stop()


def _python() -> str:
    import platform

    return platform.python_version()
