"""The broker down under a running worker: a line per change of state, red health, SIGTERM in time, nothing lost.

A private Apache Kafka (it is killed) and a plain Redis; the worker's log is counted line by line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bench.reference import assert_matches, expected, make_stream
from stream.kafka.topics import create_topics
from tests.support.apache_kafka import ApacheKafka
from tests.support.harness import (
    WorkerProcess,
    applied,
    messages,
    produce,
    scrape,
    settings_of,
    stack_env,
    wait_for,
)

OUTAGE_S = 20


def _lines(log: Path) -> list[str]:
    return [line.rstrip() for line in log.read_text().splitlines() if line.strip()]


@pytest.mark.slow
async def test_broker_outage_is_logged_once_and_sigterm_stops_in_time(
    apache_kafka_factory: Callable[..., ApacheKafka], redis_url: str, redis: aioredis.Redis, prefix: str,
    tmp_path: Path,
) -> None:
    kafka = apache_kafka_factory(partitions=2)
    env = stack_env(kafka.bootstrap, redis_url, prefix, topic_partitions="2")
    await create_topics(settings_of(env))
    now = datetime.now(UTC).replace(microsecond=0)
    events, published = make_stream(2000, seed=21, now=now)
    third = len(published) // 3
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env, "worker", log).start()
    metrics = f"http://127.0.0.1:{env['CRM_KPI_WORKER_PORT']}/metrics"
    try:
        ends = await produce(kafka.bootstrap, messages(env, published[:third]))
        await wait_for(lambda: applied(redis, prefix, ends), 90, "the first third applied")
        before = len(_lines(log))

        # The broker is down for 20 s: a few lines, not one per reconnection attempt.
        kafka.kill()

        async def kafka_down() -> bool:
            return scrape(metrics).get(("crm_worker_dependency_up", (("dependency", "kafka"),))) == 0

        await wait_for(kafka_down, 30, "crm_worker_dependency_up{dependency=kafka} 0")
        assert scrape(metrics)[("crm_worker_healthy", ())] == 0
        await asyncio.sleep(OUTAGE_S)
        during = _lines(log)[before:]
        print(f"{len(during)} lines logged during a {OUTAGE_S}s broker outage")
        assert len(during) <= 10, "\n".join(during)
        await asyncio.to_thread(kafka.start)

        async def kafka_back() -> bool:
            return scrape(metrics).get(("crm_worker_healthy", ())) == 1

        await wait_for(kafka_back, 60, "the worker to see the broker back")
        assert any("Kafka is usable again" in line for line in _lines(log)), "\n".join(_lines(log)[before:])
        more = await produce(kafka.bootstrap, messages(env, published[third : 2 * third]))
        ends = {tp: max(ends.get(tp, 0), end) for tp, end in {**ends, **more}.items()}
        await wait_for(lambda: applied(redis, prefix, ends), 90, "the second third applied after the outage")

        # SIGTERM while the broker is down: the worker stops within its shutdown budget.
        kafka.kill()
        await wait_for(kafka_down, 30, "the worker to notice the broker is gone again")
        started = time.monotonic()
        code = worker.stop(timeout=60)
        stopped_in = time.monotonic() - started
        print(f"stopped {stopped_in:.1f}s after SIGTERM with the broker down")
        assert code == 0 and stopped_in < 25, "\n".join(_lines(log)[-30:])
    finally:
        worker.stop()

    # Nothing lost: the broker back, the last third published, a new worker applies everything exactly.
    await asyncio.to_thread(kafka.start)
    rest = await produce(kafka.bootstrap, messages(env, published[2 * third :]))
    ends = {tp: max(ends.get(tp, 0), end) for tp, end in {**ends, **rest}.items()}
    second = WorkerProcess(env, "worker", tmp_path / "worker2.log").start()
    exporter = WorkerProcess(env, "exporter", tmp_path / "exporter.log").start()
    try:
        await wait_for(lambda: applied(redis, prefix, ends), 90, "every record applied by the next worker")

        async def exporting() -> bool:
            try:
                scrape(f"http://127.0.0.1:{env['CRM_KPI_EXPORTER_PORT']}/metrics")
                return True
            except OSError:
                return False

        await wait_for(exporting, 30, "the exporter")
        assert_matches(scrape(f"http://127.0.0.1:{env['CRM_KPI_EXPORTER_PORT']}/metrics"), expected(events, now))
    finally:
        exporter.stop()
        assert second.stop() == 0
    assert "Traceback" not in log.read_text()
