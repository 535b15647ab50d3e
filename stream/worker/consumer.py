"""The batch consumer: an aiokafka `getmany()` loop run as a service of the Faust worker.

Faust owns the process (lifecycle, signals, web server, clean shutdown); this
service owns the hot path, so no record pays Faust's per-message stream
machinery. Where to resume is Redis's applied offset (fenced by the batch
write); Kafka commits follow it for lag monitoring and as a fallback.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from mode import Service

from stream.events.windows import make_windows
from stream.settings import Settings
from stream.store import AsyncStore, Keys
from stream.worker.batch import BatchProcessor, OffsetConflict, offset_field
from stream.worker.dead_letters import DeadLetters
from stream.worker.metrics import WorkerMetrics

__all__ = ["BatchConsumer", "redis_client"]

log = logging.getLogger(__name__)


def redis_client(settings: Settings) -> aioredis.Redis:
    """An asyncio Redis client for the configured URL and password."""
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return aioredis.Redis.from_url(
        settings.redis_url, password=password, socket_timeout=10, socket_connect_timeout=5, health_check_interval=0
    )


def _tune_gc() -> None:
    # A batch allocates tens of thousands of acyclic objects (events, tuples,
    # dicts) that reference counting frees; most are alive while the batch is,
    # so each automatic collection rescans the batch in flight: ~30 % of the
    # worker's CPU with the default thresholds (bench, in-process A/B). The
    # automatic collector is off; `_collect_garbage` collects on a timer instead,
    # for the rare cycles (tracebacks, asyncio internals).
    # Start-up objects (modules, compiled validators) are frozen out of it.
    gc.collect()
    gc.freeze()
    gc.disable()


_GC_INTERVAL_S = 10.0
_GC_FULL_EVERY = 30  # ticks: a full collection every 5 minutes


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: BatchConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.owner.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.owner.on_assigned(assigned)


class BatchConsumer(Service):
    """Consumes the event topics in batches and applies them to Redis exactly once."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics, **kwargs: Any) -> None:
        self.settings = settings
        self.metrics = metrics
        self.topics = list(settings.event_topics())
        self._expected: dict[str, int] = {}  # next offset per partition field, as Redis says
        self._to_commit: dict[TopicPartition, int] = {}
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._redis: aioredis.Redis | None = None
        self._processor: BatchProcessor | None = None
        self._store: AsyncStore | None = None
        self._inflight: tuple[asyncio.Future[dict[str, int]], list[TopicPartition]] | None = None
        self.batches = 0
        self.last_progress = time.monotonic()  # when a batch was last applied (or the worker started)
        self._gc_ticks = 0
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        s = self.settings
        self._redis = redis_client(s)
        keys = Keys(s.redis_key_prefix)
        self._store = AsyncStore(self._redis, keys, s.dedupe_horizon, s.state_ttl)
        kafka = s.kafka_client_options()
        self._producer = AIOKafkaProducer(**kafka, acks="all", enable_idempotence=False, linger_ms=5)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            **kafka,
            group_id=s.kafka_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.batch_max_records,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            # A Redis outage pauses polling; stay in the group meanwhile.
            max_poll_interval_ms=30 * 60 * 1000,
        )
        self._processor = BatchProcessor(
            s,
            self._store,
            DeadLetters(self._producer, s.dead_letter_topic),
            self.metrics,
            make_windows(s.windows),
            keys,
        )
        self._consumer.subscribe(self.topics, listener=_Rebalance(self))
        await self._consumer.start()
        _tune_gc()
        self.metrics.watch_lag(self._lag)
        log.info("consuming %s as group %s", ", ".join(self.topics), s.kafka_group_id)

    async def on_stop(self) -> None:
        async with self._lock:
            await self._finish_inflight()
            await self._commit()
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        if self._redis is not None:
            await self._redis.aclose()

    @Service.task
    async def _consume(self) -> None:
        # Two batches in flight: while Redis runs batch N's atomic write, this
        # loop fetches and decodes batch N+1. Batch N+1 reads entity states and
        # fences offsets only after N is acknowledged, so exactness is unchanged.
        assert self._consumer is not None and self._processor is not None
        consumer, processor = self._consumer, self._processor
        timeout = self.settings.batch_timeout_ms
        limit = self.settings.batch_max_records
        while not self.should_stop:
            batch = await consumer.getmany(timeout_ms=0 if self._inflight else timeout, max_records=limit)
            async with self._lock:
                owned = consumer.assignment()
                batch = {tp: recs for tp, recs in batch.items() if tp in owned}
                prepared = processor.prepare(batch, self._expected) if batch else None
                if not await self._finish_inflight():
                    continue  # resynced from Redis: the prepared batch may predate the seek
                if prepared is None or not prepared.ranges:
                    continue
                states = await processor.read_states(prepared)
                task = asyncio.ensure_future(processor.apply(prepared, self._expected, states))
                self._inflight = (task, list(batch))
            await asyncio.sleep(0)  # let the write go out before decoding the next batch

    async def _finish_inflight(self) -> bool:
        """Wait for the batch in flight; False if Redis refused its offsets (we resynced)."""
        if self._inflight is None:
            return True
        task, partitions = self._inflight
        self._inflight = None
        try:
            applied = await task
        except OffsetConflict as conflict:
            log.warning("offset conflict on %s: resuming from Redis", conflict.field)
            await self._resync(partitions)
            return False
        self._expected.update(applied)
        self.last_progress = time.monotonic()
        for tp in partitions:
            field = offset_field(tp.topic, tp.partition)
            if field in applied:
                self._to_commit[tp] = applied[field]
        self.batches += 1
        return True

    @Service.timer(_GC_INTERVAL_S)
    async def _collect_garbage(self) -> None:
        # Young generations often (what the last 10 s left alive), everything now and
        # then: a full pass over the worker's heap pauses the loop for ~0.1-0.3 s.
        self._gc_ticks += 1
        gc.collect(2 if self._gc_ticks % _GC_FULL_EVERY == 0 else 1)

    @Service.timer(1.0)
    async def _periodic_commit(self) -> None:
        async with self._lock:
            await self._commit()

    async def _commit(self) -> None:
        if not self._to_commit or self._consumer is None:
            return
        pending, self._to_commit = self._to_commit, {}
        try:
            await self._consumer.commit({tp: OffsetAndMetadata(off, "") for tp, off in pending.items()})
        except Exception as exc:  # Redis holds the truth; a failed commit only delays lag figures.
            log.warning("offset commit failed (%s); Redis offsets remain authoritative", exc)
            for tp, off in pending.items():
                self._to_commit.setdefault(tp, off)
        else:
            owned = self._consumer.assignment()
            for tp, off in pending.items():
                if tp in owned:
                    self.metrics.committed[(tp.topic, tp.partition)] = off

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Finish the batch in flight, then commit what was applied for these partitions."""
        async with self._lock:
            await self._finish_inflight()
            await self._commit()
            for tp in revoked:
                self._expected.pop(offset_field(tp.topic, tp.partition), None)
            self.metrics.released((tp.topic, tp.partition) for tp in revoked)

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        """Resume each new partition where Redis says it was applied up to."""
        await self._resync(assigned)

    async def _resync(self, partitions: list[TopicPartition]) -> None:
        assert self._store is not None and self._consumer is not None
        fields = {offset_field(tp.topic, tp.partition): tp for tp in partitions}
        assert self._processor is not None
        stored = await self._processor.load_offsets(list(fields))
        owned = self._consumer.assignment()
        for field, tp in fields.items():
            if field in stored:
                self._expected[field] = stored[field]
                if tp in owned:
                    self._consumer.seek(tp, stored[field])
            else:
                self._expected[field] = -1

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy unless records wait (lag > 0) while no batch was applied for `worker_stall_timeout`.

        A worker that is caught up stays healthy however long the topics are quiet;
        one stuck behind (Redis gone, a wedged loop, a poison batch) turns unhealthy,
        which the compose healthcheck and a Kubernetes liveness probe read on /health.
        """
        lag = sum(self._lag().values())
        idle = time.monotonic() - self.last_progress
        ok = lag == 0 or idle < self.settings.worker_stall_timeout
        return ok, {"status": "ok" if ok else "stalled", "lag": lag, "seconds_since_progress": round(idle, 1)}

    def _lag(self) -> dict[tuple[str, int], int]:
        consumer = self._consumer
        if consumer is None:
            return {}
        out: dict[tuple[str, int], int] = {}
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            nxt = self._expected.get(offset_field(tp.topic, tp.partition), -1)
            out[(tp.topic, tp.partition)] = max(0, high - max(nxt, 0))
        return out
