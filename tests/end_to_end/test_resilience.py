"""Exactness under failure (docs/delivery.md): a worker killed mid-stream, Redis going away.

The streams cover all 24 types with joined ids (deals created then won, leads converted, tickets
answered before their opening, orders citing quotes…), repeats of event ids and events spread over
every window, late and in the future (bench/reference_catalog.make_stream). After the failure,
every series the exporter serves, in every window, must equal the independent reference's, with
none missing and none extra; the worker's counters must have counted each event once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bench.reference_catalog import expected, make_stream, operational
from stream.devtools.servers import EmbeddedServer, start_redis
from stream.kafka.topics import create_topics
from stream.settings import load_settings
from tests.support.harness import (
    WorkerProcess,
    applied,
    applied_at_least,
    exporter_figures,
    messages,
    produce,
    read_topic,
    scrape,
    settings_of,
    stack_env,
    wait_for,
)
from tests.support.series import assert_series_match, kpi_series

pytestmark = pytest.mark.slow

# The event times keep this far from every window, SLA and risk edge: the test must read its
# figures within it after NOW (asserted), or it fails saying so rather than with wrong counts.
HEADROOM_S = 900.0


def _env(kafka: str, redis_url: str, prefix: str) -> dict[str, str]:
    # Small batches: many commits and Redis writes for a kill to land between.
    return stack_env(kafka, redis_url, prefix, topic_partitions="4", batch_max_records="500")


async def _publish(env: dict[str, str], events: list[dict[str, Any]]) -> dict[Any, int]:
    await create_topics(settings_of(env))
    return await produce(env["CRM_KPI_KAFKA_BOOTSTRAP_SERVERS"], messages(env, events))


async def _final_figures(env: dict[str, str], tmp_path: Path) -> dict[Any, float]:
    return kpi_series(await exporter_figures(env, tmp_path / "exporter.log"))


def _check(got: dict[Any, float], events: list[dict[str, Any]], now: datetime) -> None:
    read_within = time.time() - now.timestamp()
    assert read_within <= HEADROOM_S, f"read {read_within:.0f}s after NOW: beyond the stream's {HEADROOM_S:.0f}s"
    assert_series_match(got, expected(events, now.timestamp()), read_within)


def _check_counters(ops: dict[Any, float], published: list[dict[str, Any]], now: datetime) -> None:
    """The worker's counters count each event once, unless Redis refused a batch it had applied.

    A SIGKILL between the script's fsync and its reply leaves the batch applied but unacknowledged:
    the retry is refused by the offset fence (counted in crm_batch_conflicts_total{kind="offset"})
    and the worker moves past it without counting its events again. The figures stay exact.
    """
    want = operational(published, now.timestamp())
    exact = ops.get(("crm_batch_conflicts_total", (("kind", "offset"),)), 0) == 0
    for kind, n in want["processed"].items():
        got = ops[("crm_events_processed_total", (("type", kind),))]
        assert got == n if exact else got <= n, kind
    for name, n in (("crm_events_duplicate_total", want["duplicates"]), ("crm_events_late_total", want["late"])):
        assert ops[(name, ())] == n if exact else ops[(name, ())] <= n, name
    assert all(v == 0 for (name, _), v in ops.items() if name == "crm_events_invalid_total")


async def test_kill_9_mid_stream_counts_every_event_once(
    kafka_bootstrap: str, redis_url: str, redis: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    events, published = make_stream(30_000, seed=11, now=now, headroom_s=HEADROOM_S)
    env = _env(kafka_bootstrap, redis_url, prefix)
    ends = await _publish(env, published)
    total = sum(ends.values())
    log = tmp_path / "worker.log"
    for fraction in (0.25, 0.6):
        worker = WorkerProcess(env, "worker", log).start()
        await wait_for(lambda f=fraction: applied_at_least(redis, prefix, f * total), 120, f"{fraction:.0%} applied")
        worker.kill()
    worker = WorkerProcess(env, "worker", log).start()
    try:
        await wait_for(lambda: applied(redis, prefix, ends), 180, "every record applied")
        _check(await _final_figures(env, tmp_path), events, now)
    finally:
        worker.stop()


@pytest.fixture
def durable_redis() -> Iterator[EmbeddedServer]:
    server = start_redis(durable=True)
    yield server
    server.stop()


async def test_redis_outage_pauses_and_loses_nothing(
    kafka_bootstrap: str, durable_redis: EmbeddedServer, prefix: str, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    events, published = make_stream(20_000, seed=12, now=now, headroom_s=HEADROOM_S)
    half = len(published) // 2
    env = _env(kafka_bootstrap, durable_redis.url, prefix)
    first = await _publish(env, published[:half])
    client = aioredis.Redis.from_url(durable_redis.url)
    worker = WorkerProcess(env, "worker", tmp_path / "worker.log").start()
    worker_url = f"http://127.0.0.1:{env['CRM_KPI_WORKER_PORT']}/metrics"
    try:
        await wait_for(lambda: applied_at_least(client, prefix, 0.2 * sum(first.values())), 120, "20% applied")
        durable_redis.kill()
        # The rest of the stream arrives during the outage: the worker must hold it, not drop it.
        ends = {**first, **await _publish(env, published[half:])}

        async def retrying(n: int) -> bool:
            return scrape(worker_url).get(("crm_redis_errors_total", ()), 0) >= n

        await wait_for(lambda: retrying(1), 60, "the worker to notice the outage")
        await wait_for(lambda: retrying(4), 60, "the worker to keep retrying with backoff")
        assert worker.proc is not None and worker.proc.poll() is None, "worker died during the outage"
        ops = scrape(worker_url)
        lag = sum(v for (name, _), v in ops.items() if name == "crm_kafka_consumer_lag")
        assert lag > 0, "records wait in Kafka during the outage"

        durable_redis.restart()
        await client.aclose()
        client = aioredis.Redis.from_url(durable_redis.url)
        await wait_for(lambda: applied(client, prefix, ends), 180, "every record applied after the outage")
        _check(await _final_figures(env, tmp_path), events, now)

        async def caught_up() -> bool:
            ops = scrape(worker_url)
            lag = [v for (name, _), v in ops.items() if name == "crm_kafka_consumer_lag"]
            return bool(lag) and not any(lag)

        await wait_for(caught_up, 30, "the consumer lag to fall back to 0")
        _check_counters(scrape(worker_url), published, now)
        settings = load_settings(topic_prefix=f"{prefix}.")
        dead = await read_topic(kafka_bootstrap, settings.dead_letter_topic, 1, timeout=3)
        assert dead == [], "nothing may be dead-lettered for an outage"
    finally:
        worker.stop()
        await client.aclose()
