"""Exactness under failure (docs/delivery.md): a worker killed mid-stream, Redis going away."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bench.reference import assert_matches, expected, make_stream
from stream.devtools.servers import EmbeddedServer, start_redis
from stream.kafka.topics import create_topics
from stream.settings import load_settings
from tests.support.harness import WorkerProcess, applied, produce, read_topic, scrape, settings_of, stack_env, wait_for

pytestmark = pytest.mark.slow


def _env(kafka: str, redis_url: str, prefix: str) -> dict[str, str]:
    # Small batches: many commits and Redis writes for a kill to land between.
    return stack_env(kafka, redis_url, prefix, topic_partitions="4", batch_max_records="500")


async def _publish(env: dict[str, str], events: list[dict[str, Any]]) -> dict[Any, int]:
    settings = settings_of(env)
    await create_topics(settings)
    from schemas import TOPIC_FAMILY

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


async def _progress(client: aioredis.Redis, prefix: str) -> int:
    raw = await client.hgetall("{" + prefix + "}:offsets")
    return sum(int(v) for v in raw.values())


async def _final_figures(env: dict[str, str], tmp_path: Path) -> dict[Any, float]:
    exporter = WorkerProcess(env, "exporter", tmp_path / "exporter.log").start()
    url = f"http://127.0.0.1:{env['CRM_KPI_EXPORTER_PORT']}/metrics"
    try:

        async def up() -> bool:
            try:
                scrape(url)
                return True
            except OSError:
                return False

        await wait_for(up, 30, "the exporter")
        return scrape(url)
    finally:
        exporter.stop()


async def test_kill_9_mid_stream_counts_every_event_once(
    kafka_bootstrap: str, redis_url: str, redis: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    events, published = make_stream(50_000, seed=11, now=now)
    env = _env(kafka_bootstrap, redis_url, prefix)
    ends = await _publish(env, published)
    total = sum(ends.values())
    log = tmp_path / "worker.log"
    for fraction in (0.25, 0.6):
        worker = WorkerProcess(env, "worker", log).start()
        await wait_for(lambda f=fraction: _at_least(redis, prefix, f * total), 120, f"{fraction:.0%} applied")
        worker.kill()
    worker = WorkerProcess(env, "worker", log).start()
    try:
        await wait_for(lambda: applied(redis, prefix, ends), 180, "every record applied")
        assert_matches(await _final_figures(env, tmp_path), expected(events, now))
        ops = scrape(f"http://127.0.0.1:{env['CRM_KPI_WORKER_PORT']}/metrics")
        assert ops[("crm_events_invalid_total", (("reason", "invalid_fields"),))] == 0
    finally:
        worker.stop()


async def _at_least(client: aioredis.Redis, prefix: str, n: float) -> bool:
    return await _progress(client, prefix) >= n


@pytest.fixture
def durable_redis() -> Iterator[EmbeddedServer]:
    server = start_redis(durable=True)
    yield server
    server.stop()


async def test_redis_outage_pauses_and_loses_nothing(
    kafka_bootstrap: str, durable_redis: EmbeddedServer, prefix: str, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    events, published = make_stream(20_000, seed=12, now=now)
    env = _env(kafka_bootstrap, durable_redis.url, prefix)
    ends = await _publish(env, published)
    total = sum(ends.values())
    client = aioredis.Redis.from_url(durable_redis.url)
    worker = WorkerProcess(env, "worker", tmp_path / "worker.log").start()
    try:
        await wait_for(lambda: _at_least(client, prefix, 0.2 * total), 120, "20% applied")
        durable_redis.kill()
        worker_url = f"http://127.0.0.1:{env['CRM_KPI_WORKER_PORT']}/metrics"

        async def saw_errors() -> bool:
            return scrape(worker_url).get(("crm_redis_errors_total", ()), 0) > 0

        await wait_for(saw_errors, 60, "the worker to notice the outage")
        assert worker.proc is not None and worker.proc.poll() is None, "worker died during the outage"
        durable_redis.restart()
        await client.aclose()
        client = aioredis.Redis.from_url(durable_redis.url)
        await wait_for(lambda: applied(client, prefix, ends), 180, "every record applied after the outage")
        assert_matches(await _final_figures(env, tmp_path), expected(events, now))
        settings = load_settings(topic_prefix=f"{prefix}.")
        dead = await read_topic(kafka_bootstrap, settings.dead_letter_topic, 1, timeout=3)
        assert dead == [], "nothing may be dead-lettered for an outage"
    finally:
        worker.stop()
        await client.aclose()
