"""The batch consumer: an aiokafka `getmany()` loop run as a service of the Faust worker.

Faust owns the process (lifecycle, signals, web server, clean shutdown); this
service owns the hot path, so no record pays Faust's per-message stream
machinery. Where to resume is Redis's applied offset (fenced by the batch
write), never Kafka's committed offset: commits follow Redis for lag monitoring.

Resync (docs/delivery.md): on every assignment, every refused offset, every fetch
position out of range and every change of Redis's offsets behind the worker's back,
the worker drops whatever it fetched, checks each assigned partition's log against
what Redis recorded (`stream.kafka.logs`) and seeks every one of them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError
from aiokafka.structs import OffsetAndMetadata
from mode import Service
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from stream.events.windows import make_windows
from stream.kafka.clients import KafkaAccessError, check_kafka, kafka_client_options
from stream.kafka.logs import LogProbe, Verdict, fetch_target, judge, needs_record
from stream.kafka.topics import MissingTopicsError, home_partition_count, require_topics
from stream.settings import Settings
from stream.store import AsyncStore, Keys, LogMark
from stream.store.connection import AsyncClient, async_client, describe_redis_error
from stream.store.writer import lua_script
from stream.worker.batch import _REDIS_DOWN, BatchProcessor, OffsetConflict, Prepared, Span, Stopping, offset_field
from stream.worker.dead_letters import DeadLetters
from stream.worker.metrics import WorkerMetrics
from stream.worker.repartition import Repartition

__all__ = ["BatchConsumer", "redis_client"]

log = logging.getLogger(__name__)


def redis_client(settings: Settings) -> AsyncClient:
    """An asyncio Redis client for the configured URL, user, password and TLS files (a cluster client with
    CRM_KPI_REDIS_CLUSTER)."""
    return async_client(settings)


# At SIGTERM: how long the batch in flight and the offset commit may take, then each
# client's close. A batch cut short is applied again at the next start (Redis's offsets
# fence it), so giving up loses nothing.
_SHUTDOWN_S = 10.0
_CLOSE_S = 5.0
# An offset commit only feeds the lag figures: never wait longer for one.
_COMMIT_TIMEOUT_S = 5.0
# Start-up checks: outages back off up to this; failures needing an operator retry this often.
_MAX_CHECK_BACKOFF_S = 30.0
_PERMANENT_RETRY_S = 30.0


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


# A young pass scans every container allocated since the last pass that is still alive,
# which is mostly the fold memo's states and contributions (<= 20k entities, ~16 objects
# each), and a busy worker rewrites most of them within seconds, so a pass costs about
# the same whether it comes after 40k records or 280k (0.11-0.28 s of CPU either way,
# in-process on the core mix of bench/workload.py, compiled core). Every 60 s instead of
# every 10 s costs ~6x less (at 10 s: ~3 % of a busy worker's CPU); what waits longer is
# only the rare cyclic garbage (tracebacks, asyncio internals).
_GC_INTERVAL_S = 60.0
_GC_FULL_EVERY = 5  # ticks: a full collection every 5 minutes
_REDIS_CHECK_S = 1.0  # how often Redis's offsets of the owned partitions are compared with the worker's
_RECHECK_BLOCKED_S = 5.0  # how often a paused partition's log is checked again (an operator re-anchored it?)
_RUNBOOK = "docs/runbooks.md"
# Event-loop rounds a Redis call takes from its task's start to its bytes being in the socket:
# redis-py checks the pooled connection, then sends in a task of its own (its socket timeout's
# `wait_for`). Measured: a batch's EVALSHA waited for its reply after 4, a 0.8 MB SET reached
# Redis after 2 on a single Redis and on a cluster (tests/integration/worker/test_sends.py);
# 8 leaves a margin. A round with nothing to run costs ~5 µs.
_SEND_ROUNDS = 8

T = TypeVar("T")


@dataclass
class _Batch:
    """A fetched batch in the pipeline: its partitions, its prepared groups, and its write once started."""

    partitions: list[TopicPartition]
    parts: list[Prepared]
    write: asyncio.Future[dict[str, int]] | None = None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: BatchConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.owner.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.owner.on_assigned(assigned)


async def _let_sends_out() -> None:
    """Give the event loop the rounds that the Redis calls just started need to reach the socket.

    The phases that follow (a batch's decode, a fold) hold the loop for ~30 ms each: a call
    still on its way out by then reaches Redis only after them, and the worker waits for its
    answer later (measured: ~10 % of a busy worker's time, before these rounds).
    """
    for _ in range(_SEND_ROUNDS):
        await asyncio.sleep(0)


def _names(partitions: Iterable[TopicPartition]) -> str:
    return ", ".join(offset_field(tp.topic, tp.partition) for tp in sorted(partitions))


class BatchConsumer(Service):
    """Consumes the event topics in batches and applies them to Redis exactly once."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics, **kwargs: Any) -> None:
        self.settings = settings
        self.metrics = metrics
        metrics.gap_horizon_s = settings.longest_window
        # Redis Cluster: events read off their home partition are forwarded through the
        # repartition topic, whose partition p feeds partition group p like any event topic.
        self.topics = settings.consumed_topics()
        self.repartition = settings.redis_cluster
        self._home_partitions = 0  # the topics' common partition count (cluster mode), checked at start
        self._expected: dict[str, int] = {}  # next offset per partition field, as Redis says
        # Where the consumer's next fetch of each owned partition starts: set by every seek,
        # moved by every batch. A batch's span starts there, so a gap cannot go unseen.
        self._cursor: dict[TopicPartition, int] = {}
        # Partitions paused because their log is not the one Redis's offsets count (Verdict).
        self._blocked: dict[TopicPartition, Verdict] = {}
        # Bumped by every resync: a batch fetched under an older generation is dropped.
        self._generation = 0
        self._to_commit: dict[TopicPartition, int] = {}
        self._commit_failing = False  # the last commit failed (said once, not every second)
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._probe: LogProbe | None = None
        self._redis: AsyncClient | None = None
        self._processor: BatchProcessor | None = None
        self._store: AsyncStore | None = None
        self._inflight: _Batch | None = None  # the batch being written
        self._next: _Batch | None = None  # the batch read ahead, to fold and write next
        self.batches = 0
        self.resyncs = 0
        self.last_progress = time.monotonic()  # when a batch was last applied (or the worker started)
        self._gc_ticks = 0
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        s = self.settings
        if not await self._wait_until_usable():
            return  # stopped before Kafka and Redis were usable: nothing was consumed
        self._redis = redis_client(s)
        if isinstance(self._redis, AsyncRedisCluster):
            # Load the slot map before the first concurrent calls (one per partition group):
            # several calls starting it at once had it replace connections under each other.
            try:
                await self._redis.initialize()
            except _REDIS_DOWN as exc:
                log.warning("Redis Cluster slot map not loaded yet (%s); the first calls load it", exc)
        keys = Keys(s.redis_key_prefix, spread=s.redis_cluster)
        self._store = AsyncStore(self._redis, keys, s.dedupe_horizon, s.state_ttl)
        kafka = kafka_client_options(s)
        # Dead letters: aiokafka holds one batch per partition and waits for it to be sent once
        # full, so 16 KB batches (the default) cost a round trip per large invalid record.
        self._producer = AIOKafkaProducer(
            **kafka, acks="all", enable_idempotence=False, linger_ms=5, max_batch_size=1 << 20
        )
        await self._producer.start()
        self._probe = LogProbe(kafka)
        await self._probe.start()
        self._consumer = AIOKafkaConsumer(
            **kafka,
            group_id=s.kafka_group_id,
            enable_auto_commit=False,
            # Never jump silently: a fetch position outside the log raises, and the worker
            # checks the log against Redis (every partition is sought on assignment anyway).
            auto_offset_reset="none",
            max_poll_records=s.batch_max_records,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            # A Redis outage pauses polling; stay in the group meanwhile.
            max_poll_interval_ms=30 * 60 * 1000,
            # A topic deleted and created again (or created after the worker started) is seen at
            # the next metadata refresh: 15 s rather than aiokafka's 5 minutes.
            metadata_max_age_ms=15_000,
        )
        self._processor = BatchProcessor(
            s,
            self._store,
            DeadLetters(self._producer, s.dead_letter_topic, s.repartition_topic if self.repartition else None),
            self.metrics,
            make_windows(s.windows),
            keys,
            Repartition(self._producer, s.repartition_topic) if self.repartition else None,
            self._home_partitions,
        )
        try:
            await require_topics(s, [*self.topics, s.dead_letter_topic])
        except MissingTopicsError as exc:
            # Not fatal: the worker is assigned the topics' partitions once they exist.
            log.error("%s; waiting for them", exc)
        except (KafkaError, OSError) as exc:
            log.warning("could not check the topics exist (%s)", exc)
        self._consumer.subscribe(self.topics, listener=_Rebalance(self))
        await self._consumer.start()
        _tune_gc()
        self.metrics.watch_lag(self._lag)
        self.metrics.health.started = True
        log.info("consuming %s as group %s", ", ".join(self.topics), s.kafka_group_id)

    async def _wait_until_usable(self) -> bool:
        """Check Kafka (rights included) and Redis until both work, saying why not; False if stopped meanwhile."""
        health = self.metrics.health
        delay = 1.0
        while not self.should_stop:
            failure = await self._check_dependencies()
            if failure is None:
                return True
            dependency, kind, message, permanent = failure
            wait = _PERMANENT_RETRY_S if permanent else delay
            health.failed(dependency, kind, f"cannot start: {message}", permanent, wait)
            await self.sleep(wait)
            delay = min(_MAX_CHECK_BACKOFF_S, delay * 2)
        return False

    async def _check_dependencies(self) -> tuple[str, str, str, bool] | None:
        """None if Kafka and Redis work as the worker needs, else (dependency, kind, one line, permanent)."""
        s = self.settings
        health = self.metrics.health
        try:
            await check_kafka(s, read=self.topics, write=self._writes(), group=s.kafka_group_id)
            if self.repartition:
                self._home_partitions = await home_partition_count(s)
        except KafkaAccessError as exc:
            return "kafka", exc.kind, str(exc), exc.permanent
        except (KafkaError, OSError, TimeoutError) as exc:
            return "kafka", "unreachable", f"could not read the topics' partition counts ({exc})", False
        health.recovered("kafka")
        client = redis_client(s)
        try:
            # What the worker runs first: its script, and its offsets (no PING: its ACL need not allow it).
            await client.script_load(lua_script("apply.lua"))
            await client.hmget(Keys(s.redis_key_prefix).offsets, [offset_field(self.topics[0], 0)])
            await client.smembers(Keys(s.redis_key_prefix).registry)
        except Exception as exc:  # every failure becomes one line: see describe_redis_error
            failure = describe_redis_error(exc, s)
            return "redis", failure.kind, str(failure), failure.permanent
        finally:
            await client.aclose()
        health.recovered("redis")
        return None

    def _writes(self) -> list[str]:
        """The topics the worker writes: dead letters, and in cluster mode the repartition topic."""
        s = self.settings
        return [s.dead_letter_topic, *([s.repartition_topic] if self.repartition else [])]

    async def on_stop(self) -> None:
        if self._processor is not None:
            self._processor.stop()  # a retry loop waiting for Redis or Kafka gives up now
        try:
            await asyncio.wait_for(self._drain(), _SHUTDOWN_S)
        except (TimeoutError, Stopping):
            log.warning("stopping without finishing the batch in flight; it is applied again at the next start")
        for name, client in (("consumer", self._consumer), ("log probe", self._probe), ("producer", self._producer)):
            if client is None:
                continue
            try:
                await asyncio.wait_for(client.stop(), _CLOSE_S)
            except TimeoutError:
                log.warning("Kafka %s did not close within %.0fs (broker unreachable?)", name, _CLOSE_S)
            except Exception as exc:
                log.warning("Kafka %s closed with an error: %s", name, exc)
        if self._redis is not None:
            try:  # a frozen Redis never acknowledges the TLS close: do not wait for it
                await asyncio.wait_for(self._redis.aclose(), 1.0)
            except Exception as exc:
                log.debug("Redis client closed with an error: %s", exc)

    async def _drain(self) -> None:
        async with self._lock:
            await self._flush(resync=False)
            await self._commit()

    @Service.task
    async def _consume(self) -> None:
        if self._consumer is None or self._processor is None:
            return  # stopped during start-up
        while not self.should_stop:
            try:
                await self._step()
            except Stopping:
                return  # stopping while Redis or Kafka was failing: what is not applied is read again next time
            except Exception:
                if self.should_stop:
                    return  # stopping: on_stop closes the clients under the loop; its batch is finished there
                raise

    async def _step(self) -> None:
        """Fetch a batch and send its read; fold the batch fetched before and write it after the one before."""
        # Three batches in the pipeline. While Redis writes batch N-1, this step fetches
        # and decodes batch N+1 and sends its read, then folds batch N, whose read was sent
        # in the step before and has been answered meanwhile; N's write goes out once N-1 is
        # acknowledged. The worker's CPU and Redis's thus work side by side, and no step
        # waits for a read. Reads sent ahead take the states and ids of the batches not yet
        # written from their folds (BatchProcessor.read_ahead); a write still fences its
        # offsets and checks every state it changes, and a fold whose basis was refused is
        # done again: exactness is unchanged (docs/delivery.md).
        assert self._consumer is not None and self._processor is not None
        consumer, processor = self._consumer, self._processor
        generation = self._generation
        try:
            batch = await consumer.getmany(
                timeout_ms=0 if self._inflight or self._next else self.settings.batch_timeout_ms,
                max_records=self.settings.batch_max_records,
            )
        except OffsetOutOfRangeError as exc:
            # The log no longer holds the position: retention deleted it, or the log went backwards.
            async with self._lock:
                await self._flush(resync=False)
                where = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
                log.warning("fetch position outside the log on %s: checking the logs against Redis", _names(where))
                await self._resync("a fetch position outside the log")
            return
        except NoOffsetForPartitionError:
            # A new partition the fetcher reached before the assignment's resync sought it
            # (the group never committed it): seek now unless that resync ran meanwhile.
            async with self._lock:
                if generation == self._generation:
                    await self._flush(resync=False)
                    await self._resync("a partition without a position")
            return
        async with self._lock:
            if generation != self._generation:
                self._give_back(batch)
                return
            spans = await self._spans(batch)
            if spans is None:
                await self._flush(resync=False)
                await self._resync("a partition left during a fetch")
                return
            batch = {tp: recs for tp, recs in batch.items() if tp in spans}
            prepared = processor.prepare(batch, self._expected, spans) if batch else []
            for part in prepared:
                # Kafka acks this batch's dead letters and forwards while the batches before are written.
                processor.send_ahead(part)
            prepared = [p for p in prepared if p.ranges]
            if prepared:
                below = [b.parts for b in (self._next, self._inflight) if b is not None]
                processor.read_ahead(prepared, below)
                await _let_sends_out()  # Redis answers the read while batch N is folded
            current, self._next = self._next, _Batch(list(batch), prepared) if prepared else None
            if not await self._write_next(current):
                return  # resynced from Redis: every partition was sought again, what was fetched is stale
        await _let_sends_out()  # the writes leave before the next batch's decode

    async def _write_next(self, current: _Batch | None, resync: bool = True) -> bool:
        """Fold `current` (read ahead), wait for the batch being written, then start `current`'s write.

        False if Redis refused the batch being written: then `current` and the batch read
        ahead after it are dropped (and, with `resync`, every partition is sought again).
        """
        assert self._processor is not None
        processor = self._processor
        if current is not None:
            await processor.fold_read(current.parts)
        if not await self._finish_inflight(resync):
            for dropped in (current, self._next):
                for part in dropped.parts if dropped is not None else ():
                    processor.discard(part)
            self._next = None
            return False
        if current is not None:
            for part in current.parts:
                processor.settle(part)
            current.write = processor.start_all(current.parts, self._expected)
            self._inflight = current
        return True

    async def _flush(self, resync: bool = True) -> bool:
        """Write every batch the worker holds (the one read ahead, the one being written) and wait for both.

        False if Redis refused one of them (then, with `resync`, resynced).
        """
        current, self._next = self._next, None
        return await self._write_next(current, resync) and await self._finish_inflight(resync)

    def _give_back(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Drop a batch fetched across a resync, seeking its partitions back to their cursors.

        The resync sought every partition and set its cursor while the fetch was under way, so
        the records may be the ones the fetch read from the new positions: dropping them moved
        the consumer past them, and the next batch's span, which starts at the cursor, would
        claim them applied (the write's fence checks the start, not the records). Seeking back
        costs a fetch when the records were older ones, fetched before the seek.
        """
        assert self._consumer is not None
        owned = self._consumer.assignment()
        for tp in batch:
            cursor = self._cursor.get(tp)
            if tp in owned and cursor is not None and tp not in self._blocked:
                self._consumer.seek(tp, cursor)

    async def _spans(self, batch: dict[TopicPartition, list[Any]]) -> dict[TopicPartition, Span] | None:
        """Each fetched partition's (cursor before, position after) the batch, moving the cursors.

        Partitions paused for a log mismatch are left out; None when a partition of the batch
        is no longer assigned (a rebalance is under way: the caller resyncs).
        """
        assert self._consumer is not None
        owned = self._consumer.assignment()
        spans: dict[TopicPartition, Span] = {}
        for tp, records in batch.items():
            if tp not in owned:
                return None
            if tp in self._blocked:
                continue
            try:
                # Does not suspend: a partition that just returned records has a valid position.
                end = await self._consumer.position(tp)
            except IllegalStateError:
                return None
            start = self._cursor.get(tp, records[0].offset)
            spans[tp] = (start, end)
            self._cursor[tp] = end
        return spans

    async def _finish_inflight(self, resync: bool = True) -> bool:
        """Wait for the batch in flight; False if Redis refused its offsets (then, with `resync`, resynced)."""
        if self._inflight is None:
            return True
        task, partitions = self._inflight.write, self._inflight.partitions
        self._inflight = None
        assert task is not None
        try:
            applied = await task
        except Stopping:
            return False
        except OffsetConflict as conflict:
            if conflict.gap:
                log.error("refused batch on %s (%s): resuming every partition from Redis", conflict.field, conflict)
            else:
                log.warning("offset conflict on %s (%s): resuming every partition from Redis", conflict.field, conflict)
            if resync:
                await self._resync("an offset conflict")
            else:
                self._generation += 1  # the assignment is about to change; on_assigned seeks every partition
            return False
        self._expected.update(applied)
        self.last_progress = time.monotonic()
        for tp in partitions:
            field = offset_field(tp.topic, tp.partition)
            if field in applied:
                self._to_commit[tp] = applied[field]
        self.batches += 1
        return True

    @Service.timer(5.0)
    async def _watch_kafka(self) -> None:
        # aiokafka retries a lost broker on its own and only logs; the health says when it is back.
        health = self.metrics.health
        if health.started and health.failing("kafka"):
            try:
                await check_kafka(self.settings, timeout=3.0)
            except KafkaAccessError:
                return
            health.recovered("kafka")

    @Service.timer(_GC_INTERVAL_S)
    async def _collect_garbage(self) -> None:
        # Young generations every minute (what the last minute left alive), everything now
        # and then: a full pass over the worker's heap pauses the loop for ~0.1-0.3 s.
        self._gc_ticks += 1
        gc.collect(2 if self._gc_ticks % _GC_FULL_EVERY == 0 else 1)

    @Service.task
    async def _periodic_commit(self) -> None:
        # Without the pipeline's lock: aiokafka retries a commit for as long as the group
        # coordinator is unavailable (a broker restarting, its offsets topic loading), and
        # the batches must not wait for what only feeds the lag figures.
        async for _ in self.itertimer(self.settings.commit_interval, name="commit"):  # CRM_KPI_COMMIT_INTERVAL
            await self._commit()

    async def _commit(self) -> None:
        """Commit the offsets Redis applied (for lag monitoring); gives up after `_COMMIT_TIMEOUT_S`.

        A failed or timed-out commit keeps its offsets for the next one, unless a resync or
        a rebalance replaced them meanwhile.
        """
        if not self._to_commit or self._consumer is None:
            return
        consumer = self._consumer
        pending, self._to_commit = self._to_commit, {}
        generation = self._generation
        try:
            await asyncio.wait_for(
                consumer.commit({tp: OffsetAndMetadata(off, "") for tp, off in pending.items()}), _COMMIT_TIMEOUT_S
            )
        except Exception as exc:  # Redis holds the truth; a failed commit only delays lag figures.
            if not self._commit_failing:
                reason = str(exc) or f"no answer within {_COMMIT_TIMEOUT_S:.0f}s"
                log.warning("offset commit failed (%s); Redis offsets remain authoritative, retrying", reason)
            self._commit_failing = True
            if generation == self._generation:  # no resync or rebalance since: still this worker's offsets
                for tp, off in pending.items():
                    self._to_commit.setdefault(tp, off)
        else:
            if self._commit_failing:
                log.warning("offset commits work again")
            self._commit_failing = False
            owned = consumer.assignment()
            for tp, off in pending.items():
                if tp in owned:
                    self.metrics.committed[(tp.topic, tp.partition)] = off

    @Service.timer(_REDIS_CHECK_S)
    async def _watch_redis(self) -> None:
        """Resync when Redis's offsets of the owned partitions are no longer the worker's.

        The batch fence sees it too, but only on a partition's next batch: an idle partition
        whose records Redis lost would stay missing (and its lag 0) until new records came.
        Partitions of the batches in the pipeline are left out (their writes move their
        offsets, and each write's fence checks them), so the pipeline keeps running.
        """
        if self._store is None or self._consumer is None or not self._expected:
            return
        async with self._lock:
            owned = {f: n for f, n in self._expected.items() if n >= 0}
            pipeline = [tp for b in (self._inflight, self._next) if b is not None for tp in b.partitions]
            busy = {offset_field(tp.topic, tp.partition) for tp in pipeline}
            fields = {f: n for f, n in owned.items() if f not in busy}
            try:
                # One attempt: during an outage the batch path already waits for Redis.
                stored = await asyncio.wait_for(self._store.load_offsets(fields), timeout=2.0)
                # The readers' registry of groups is another key (another slot on a cluster): write
                # it back should a failover or a restore have lost it (an idempotent SADD).
                await asyncio.wait_for(self._store.register(self._store.keys.group_of(f) for f in owned), timeout=2.0)
            except (TimeoutError, *_REDIS_DOWN):
                return
            moved = sorted(f for f, n in fields.items() if stored.get(f) != n)
            if moved:
                log.warning("Redis's applied offsets changed under this worker on %s", ", ".join(moved))
                if await self._flush():  # a resync starts with nothing in flight (else the flush resynced)
                    await self._resync("Redis's offsets changed")

    @Service.timer(_RECHECK_BLOCKED_S)
    async def _recheck_blocked(self) -> None:
        """Resume paused partitions once their log matches Redis again (`crm-kpi offsets reset`)."""
        if not self._blocked:
            return
        async with self._lock:
            blocked = [tp for tp in self._blocked if self._consumer is not None and tp in self._consumer.assignment()]
            if not blocked:
                return
            try:
                verdicts, _, _ = await self._check_logs(blocked, retry=False)
            except (TimeoutError, KafkaError, OSError, *_REDIS_DOWN):
                return
            if any(not v.blocks or v != self._blocked.get(tp) for tp, v in verdicts.items()):
                await self._resync("a paused partition's offsets changed")

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Finish the batch in flight, then commit what was applied for these partitions."""
        async with self._lock:
            await self._flush(resync=False)
            await self._commit()
            self._generation += 1
            for tp in revoked:
                self._expected.pop(offset_field(tp.topic, tp.partition), None)
                self._cursor.pop(tp, None)
                self._to_commit.pop(tp, None)  # put back by a periodic commit that failed meanwhile
                self._blocked.pop(tp, None)
                self.metrics.log_mismatch.pop((tp.topic, tp.partition), None)
                self.metrics.history_gaps.pop((tp.topic, tp.partition), None)
            self.metrics.released((tp.topic, tp.partition) for tp in revoked)

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        """Resume each new partition where Redis says it was applied up to (after checking its log)."""
        log.info("assigned %d partition(s)", len(assigned))
        async with self._lock:
            await self._resync("partitions assigned")

    # --- resync ---------------------------------------------------------------------

    async def _resync(self, why: str) -> None:
        """Drop everything fetched, check every assigned partition's log, seek each to Redis's offset.

        Called with the lock held and nothing in flight.
        """
        assert self._consumer is not None and self._processor is not None
        if self._next is not None:  # read ahead from positions about to be sought again
            for part in self._next.parts:
                self._processor.discard(part)
            self._next = None
        self._generation += 1
        self.resyncs += 1
        consumer = self._consumer
        for _ in range(10):  # a concurrent writer may move an offset while this runs: read again
            owned = sorted(consumer.assignment())
            if not owned:
                return
            verdicts, marks, bounds = await self._check_logs(owned)
            if await self._act(owned, verdicts, marks, bounds, why):
                return
        raise RuntimeError("the applied offsets in Redis kept changing during a resync")

    async def _check_logs(
        self, partitions: list[TopicPartition], retry: bool = True
    ) -> tuple[dict[TopicPartition, Verdict], dict[TopicPartition, LogMark], dict[TopicPartition, tuple[int, int]]]:
        """Redis's record of each partition against its log: verdict, mark and (log start, log end)."""
        assert self._processor is not None and self._probe is not None
        fields = {offset_field(tp.topic, tp.partition): tp for tp in partitions}
        if retry:
            raw = await self._processor.load_marks(list(fields))
        else:
            assert self._store is not None
            raw = await asyncio.wait_for(self._store.load_marks(list(fields)), timeout=5.0)
        marks = {tp: raw[f] for f, tp in fields.items()}
        probe = self._probe
        targets = {tp: fetch_target(marks[tp]) for tp in partitions}
        views = await self._kafka(lambda: probe.inspect(targets), "read the logs", retry)
        verdicts: dict[TopicPartition, Verdict] = {}
        bounds: dict[TopicPartition, tuple[int, int]] = {}
        for tp in partitions:
            view, mark = views[tp], marks[tp]
            bounds[tp] = (view.start, view.end)
            checked = needs_record(mark, view.start, view.end) == targets[tp]
            verdict = judge(mark, view.start, view.end, view.record if checked else None)
            if verdict.blocks and not view.fetched:
                # No fetch answered in time: never pause a partition on a guess; the next resync checks again.
                log.warning("could not read %s to check its log (%s); resuming from Redis's offset", tp, verdict.value)
                verdict = Verdict.OK if mark.next is not None and mark.next >= view.start else verdict
            verdicts[tp] = verdict
        return verdicts, marks, bounds

    async def _act(
        self,
        owned: list[TopicPartition],
        verdicts: dict[TopicPartition, Verdict],
        marks: dict[TopicPartition, LogMark],
        bounds: dict[TopicPartition, tuple[int, int]],
        why: str,
    ) -> bool:
        """Seek, anchor or pause each partition per its verdict; False if an anchor lost a race."""
        assert self._consumer is not None and self._processor is not None
        consumer, processor = self._consumer, self._processor
        rewound: list[str] = []
        rebuilt: list[str] = []
        lost: list[str] = []
        newly_blocked: dict[Verdict, list[str]] = {}
        for tp in owned:
            field = offset_field(tp.topic, tp.partition)
            verdict, mark = verdicts[tp], marks[tp]
            start, end = bounds[tp]
            before = self._expected.get(field)
            self._to_commit.pop(tp, None)
            if verdict.blocks:
                if self._blocked.get(tp) != verdict:
                    newly_blocked.setdefault(verdict, []).append(f"{field} (Redis {mark.next}, log {start}..{end})")
                self._blocked[tp] = verdict
                self.metrics.log_mismatch[(tp.topic, tp.partition)] = verdict.value
                self._expected.pop(field, None)
                consumer.seek(tp, end)  # a valid position; nothing is fetched while paused
                consumer.pause(tp)
                continue
            resume_at = mark.next
            if verdict is Verdict.UNANCHORED:
                committed = await self._committed(tp)
                gone = start  # records below the log start: applied to a Redis that lost them, or never
                done, _ = await processor.anchor(field, None, start, gone)
                if not done:
                    return False
                resume_at = start
                had = max(before or 0, committed or 0)
                if had > start or (before is not None and before > 0):
                    self.metrics.redis_rewinds.labels(tp.topic).inc()
                    rebuilt.append(f"{field} (had {had})")
                if gone > 0:
                    lost.append(f"{field} below {start} ({gone} records)")
            elif verdict is Verdict.RETENTION_LOSS:
                assert mark.next is not None
                gone = start - mark.next
                done, _ = await processor.anchor(field, mark.next, start, gone)
                if not done:
                    return False
                resume_at = start
                lost.append(f"{field} {mark.next}..{start - 1} ({gone} records)")
            elif before is not None and mark.next is not None and mark.next < before:
                self.metrics.redis_rewinds.labels(tp.topic).inc()
                rewound.append(f"{field} {before} -> {mark.next} ({before - mark.next} records)")
            assert resume_at is not None
            self._expected[field] = resume_at
            self._cursor[tp] = resume_at
            consumer.seek(tp, resume_at)
            if self._blocked.pop(tp, None) is not None:
                self.metrics.log_mismatch.pop((tp.topic, tp.partition), None)
                consumer.resume(tp)
                log.warning("%s: its log matches Redis again; resuming at offset %d", field, resume_at)
        if rewound:
            log.error(
                "Redis went back (it lost writes: an older snapshot, a promoted replica or a restore): "
                "re-applying from Kafka %s",
                ", ".join(rewound),
            )
        if rebuilt:
            log.error(
                "Redis holds no applied offset for partitions it had applied (Redis lost its data): "
                "rebuilding them from the start of the Kafka log: %s",
                ", ".join(rebuilt),
            )
        if lost:
            log.error(
                "records deleted by Kafka's retention before Redis held them: windows covering them stay "
                "incomplete (crm_kpi_history_gap_records): %s",
                ", ".join(lost),
            )
        for verdict, names in newly_blocked.items():
            what = (
                "ends below the offset Redis applied"
                if verdict is Verdict.LOG_BEHIND
                else "holds other records than the ones Redis applied"
            )
            log.error(
                "the Kafka log of %s %s (topic recreated or truncated): paused, nothing skipped; "
                "see `crm-kpi offsets show` and %s#crmkpipartitionlogmismatch",
                ", ".join(names),
                what,
                _RUNBOOK,
            )
        await self._processor.register({self._processor.keys.group_for(tp.partition) for tp in owned})
        await self._load_gaps(owned)
        log.debug("resynced %d partitions after %s", len(owned), why)
        return True

    async def _committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset (a hint that Redis once held more), or None."""
        assert self._consumer is not None
        try:
            value = await asyncio.wait_for(self._consumer.committed(tp), timeout=5.0)
        except (TimeoutError, KafkaError, OSError):
            return None
        return int(value) if value is not None else None

    async def _load_gaps(self, owned: list[TopicPartition]) -> None:
        assert self._store is not None
        try:
            gaps = await asyncio.wait_for(
                self._store.load_gaps(offset_field(tp.topic, tp.partition) for tp in owned), timeout=5.0
            )
        except (TimeoutError, *_REDIS_DOWN):
            return
        for tp in owned:
            value = gaps.get(offset_field(tp.topic, tp.partition))
            if value is not None:
                self.metrics.history_gaps[(tp.topic, tp.partition)] = value
            else:
                self.metrics.history_gaps.pop((tp.topic, tp.partition), None)

    async def _kafka(self, call: Callable[[], Awaitable[T]], what: str, retry: bool = True) -> T:
        """Await a Kafka request, retrying with backoff through broker outages (unless `retry` is off)."""
        delay = 0.1
        while True:
            try:
                return await call()
            except (TimeoutError, KafkaError, OSError) as exc:
                if not retry or self.should_stop:
                    raise
                log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2) * (0.8 + 0.4 * random.random())

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
