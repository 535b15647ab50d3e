"""A fetch that a resync overtakes gives its records back: none is skipped.

The consumer fetches outside the pipeline's lock. A resync may run meanwhile (a
rebalance's assignment, Redis's offsets moving): it seeks every partition to Redis's
offset and sets the worker's cursors there. The fetch can then return records read
from the new positions, which moves the consumer past them; the step drops that batch
as fetched under an older generation. Unless the step seeks those partitions back, the
next batch's span starts at the cursor while its records start later: the write's
fence accepts it and the dropped records are never applied (the joining/leaving fault
test's silent undercount). Real Apache Kafka and redis-server; the worker's own
consumer in this process, its resync run inside its fetch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer

from bench.reference import make_stream
from stream.kafka.topics import create_topics
from stream.worker import consumer as consumer_module
from stream.worker.consumer import BatchConsumer
from stream.worker.metrics import WorkerMetrics
from tests.support.apache_kafka import ApacheKafka
from tests.support.harness import (
    applied,
    messages,
    produce,
    settings_of,
    stack_env,
    unapplied_records,
    wait_for,
)

pytestmark = pytest.mark.slow


class _Overtaken:
    """Every third fetch of the worker (once a batch was applied) runs a resync first, as a concurrent task would."""

    def __init__(self) -> None:
        self.worker: BatchConsumer | None = None
        self.calls = 0
        self.resyncs = 0

    async def before_fetch(self) -> bool:
        worker = self.worker
        self.calls += 1
        if worker is None or worker.batches == 0 or self.calls % 3:
            return False
        # What `_watch_redis` does when Redis's offsets moved: flush, then resync (seeks and cursors).
        async with worker._lock:
            if await worker._flush():
                await worker._resync("a resync overtaking a fetch (test)")
        self.resyncs += 1
        return True


async def test_records_fetched_across_a_resync_are_fetched_again(
    apache_kafka: ApacheKafka, redis: aioredis.Redis, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = stack_env(apache_kafka.bootstrap, redis_url, prefix, topic_partitions="2", batch_max_records="150")
    settings = settings_of(env)
    await create_topics(settings)
    _, published = make_stream(3_000, seed=7, now=datetime.now(UTC))
    ends = await produce(apache_kafka.bootstrap, messages(env, published))
    race = _Overtaken()

    class RacedConsumer(AIOKafkaConsumer):  # type: ignore[misc]
        async def getmany(self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None) -> Any:
            if await race.before_fetch():
                # The fetch then waits for records, as one started with an empty pipeline does:
                # they come from the positions the resync just sought.
                timeout_ms = max(timeout_ms, 5_000)
            return await super().getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)

    monkeypatch.setattr(consumer_module, "AIOKafkaConsumer", RacedConsumer)
    worker = BatchConsumer(settings, WorkerMetrics())
    race.worker = worker
    await worker.start()
    try:
        await wait_for(lambda: applied(redis, prefix, ends), 60, "every record applied (a skipped tail never is)")
    finally:
        await worker.stop()
    assert race.resyncs >= 3, "the race was run"
    lost = await unapplied_records(apache_kafka.bootstrap, redis, prefix, ends)
    assert not lost, f"applied offsets cover records never applied: {lost}"
