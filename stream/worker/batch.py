"""One batch of Kafka records, end to end: decode, dead-letter, dedupe, fold, apply.

Exactness (docs/delivery.md) rests on one atomic Redis call per partition group of
a batch (its records of one Kafka partition number, whose keys share a hash tag) that
(a) fences each partition's applied offset, so a replayed record is never
applied twice however late it comes back, (b) records event-id digests, so a
producer's second copy within the dedupe horizon is dropped, and (c) writes
the aggregated delta. Kafka offsets are committed only afterwards, and Redis
stays the source of truth for where to resume.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import redis.exceptions
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError

from stream.events.decode import Rejection, decode_records
from stream.events.dedupe import first_copies
from stream.events.fold import BatchDelta, FoldContext, FoldMemo, entity_keys, fold
from stream.events.windows import Window
from stream.kafka.logs import Fingerprint
from stream.kafka.routing import home_partition, routing_key
from stream.kpis import fold_rules
from stream.settings import Settings
from stream.store import AsyncStore, BatchRead, Keys, LogMark
from stream.store.connection import describe_redis_error
from stream.worker.dead_letters import DeadLetters
from stream.worker.metrics import WorkerMetrics
from stream.worker.repartition import Forward, Repartition

__all__ = ["BatchProcessor", "Folded", "OffsetConflict", "Prepared", "Span", "Stopping", "offset_field"]

log = logging.getLogger(__name__)

_REDIS_DOWN = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    # A Redis Cluster failing over or resharding, once the client's own redirects and
    # retries ran out: CLUSTERDOWN (and MASTERDOWN), TRYAGAIN (a multi-key call during a
    # slot migration), a redirect loop, a slot no node serves yet, no node reachable.
    # Retrying is safe: a write whose reply was lost is settled by the offset fence.
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.AskError,
    redis.exceptions.RedisClusterException,
    OSError,
)
# Refusals no retry fixes until an operator acts: wrong password, missing ACL rights.
_REDIS_REFUSED = (redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError)
_MAX_BACKOFF_S = 5.0
_HOME_CACHE = 200_000  # routing keys whose home partition is remembered (~25 MB at most)
# Retry interval of a failure that needs an operator (credentials, certificates, ACLs):
# often enough to resume soon after the fix, rarely enough not to hammer the server.
_PERMANENT_RETRY_S = 30.0


def offset_field(topic: str, partition: int) -> str:
    """Field of the offsets hash for one partition."""
    return f"{topic}:{partition}"


class Stopping(Exception):
    """The worker is stopping while a call was failing: the batch is left for the next start (never lost)."""


class OffsetConflict(Exception):
    """Redis refused the batch's offsets: it holds another applied offset than expected (another
    worker applied these records, or Redis lost writes), or the batch does not start there (a gap)."""

    def __init__(self, field: str, stored: int | None, first: int | None = None) -> None:
        where = f"applied up to {stored}" if stored is not None else "has no applied offset"
        gap = f"; the batch starts at {first}" if first is not None else ""
        super().__init__(f"{field} {where}{gap}")
        self.field = field
        self.stored = stored
        self.first = first

    @property
    def gap(self) -> bool:
        """True when the stored offset was the expected one but the batch started elsewhere."""
        return self.first is not None


# A partition's span in a batch: the consumer's position before and after it fetched the
# batch's records. They differ from the first and last record's offsets where the log has
# offsets without records (transaction markers, aborted or compacted records).
Span = tuple[int, int]


@dataclass
class Prepared:
    """The records of one partition group of a decoded batch, waiting for their Redis write.

    A group is one Kafka partition number across the event topics: its keys share one
    hash tag (`stream.store.keys`), so its write is one atomic script even on a cluster.
    """

    # (partition field, first offset of the batch, next offset after it, fingerprint of its last record or "")
    ranges: list[tuple[str, int, int, str]]
    unique: list[tuple[Any, int]]  # (valid event, occurred_at µs), first copy of each id
    digests: list[bytes]
    rejected: list[tuple[Any, Rejection]]
    in_batch_duplicates: int
    entity_keys: list[str]
    seconds: float
    newest: dict[str, int]  # partition field -> newest occurred_at (µs) of its valid records
    group: int = 0  # the partition group (Kafka partition number) of every record here
    # The send of `rejected` to the dead-letter topic, once started (BatchProcessor.send_dead_letters).
    dead_lettered: asyncio.Future[None] | None = None
    # Valid events read off their home partition (Redis Cluster): forwarded, not folded here.
    forward: list[Forward] = dataclass_field(default_factory=list)
    # Their send to the repartition topic, once started (BatchProcessor.send_forwards).
    forwarded: asyncio.Future[None] | None = None
    # Read ahead (BatchProcessor.read_ahead): the read in flight, and this group's parts of the
    # batches not yet written when it was sent (newest first), whose folds supply what it skips.
    reading: asyncio.Future[BatchRead] | None = None
    basis: list[Prepared] = dataclass_field(default_factory=list)
    # The fold done ahead of the write (BatchProcessor.fold_read), and the states it folded over.
    folded: Folded | None = None
    states: dict[str, str | None] = dataclass_field(default_factory=dict)
    # The delta Redis accepted for this group (set by `apply`).
    written: BatchDelta | None = None

    key_set: frozenset[str] = dataclass_field(init=False)  # entity_keys
    digest_set: frozenset[bytes] = dataclass_field(init=False)  # digests

    def __post_init__(self) -> None:
        self.key_set = frozenset(self.entity_keys)
        self.digest_set = frozenset(self.digests)

    def state_after(self, key: str) -> str | None:
        """The raw state of one of this part's entity keys once its fold ahead is written."""
        assert self.folded is not None
        written = self.folded.delta.entity_writes.get(key)
        return written[1] if written is not None else self.states.get(key)


@dataclass
class Folded:
    """One group's fold, ready for its atomic write: the delta and the events it holds.

    `unique` and `digests` are the prepared ones less the `dropped` ids that the read
    before the fold found recorded already (or that the batch in flight records).
    `now_s` is the clock the fold and the write's dedupe slots use (unix s).
    """

    delta: BatchDelta
    unique: list[tuple[Any, int]]
    digests: list[bytes]
    dropped: int
    now_s: float


class BatchProcessor:
    """Applies batches of consumer records to Redis exactly once."""

    def __init__(
        self,
        settings: Settings,
        store: AsyncStore,
        dead_letters: DeadLetters,
        metrics: WorkerMetrics,
        windows: tuple[Window, ...],
        keys: Keys,
        repartition: Repartition | None = None,
        home_partitions: int = 0,
    ) -> None:
        """`repartition` and `home_partitions` (the event topics' partition count): in the spread
        layout (Redis Cluster), valid events read off their home partition are forwarded there
        (`stream.worker.repartition`); without them, or on a single Redis, nothing is."""
        self.settings = settings
        self.store = store
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.windows = windows
        self.keys = keys
        self._family = settings.event_topics()
        self.repartition = repartition
        self._internal = repartition.topic if repartition is not None else None
        self._homes = home_partitions if keys.spread and repartition is not None else 0
        # Routing key -> home partition: customers recur across batches, and murmur2 is pure Python.
        self._home_of: dict[bytes, int] = {}
        self._rules = fold_rules(settings.kpi_config())
        self._max_skew_us = int(settings.max_future_skew * 1_000_000)
        self._memo = FoldMemo()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Make every retry loop give up (`Stopping`) instead of waiting for a server to come back."""
        self._stopping.set()

    async def process(
        self,
        batch: Mapping[Any, Sequence[Any]],
        expected: Mapping[str, int],
        spans: Mapping[Any, Span] | None = None,
    ) -> dict[str, int]:
        """Apply `batch` ({TopicPartition: records}); return the new next offset per partition field.

        `expected` is each partition's next offset as Redis last said (-1: none
        stored). Records below it were applied already and are skipped.
        Raises OffsetConflict when Redis disagrees (the caller re-seeks).
        """
        parts = self.prepare(batch, expected, spans)
        self.read_ahead(parts)
        await self.fold_read(parts)
        return await self.apply_all(parts, expected)

    def prepare(
        self,
        batch: Mapping[Any, Sequence[Any]],
        expected: Mapping[str, int],
        spans: Mapping[Any, Span] | None = None,
    ) -> list[Prepared]:
        """The CPU half of a batch (no I/O), per partition group: see `prepare_group`.

        Groups are prepared, read and written separately: each group's entity states,
        dedupe sets and offsets are keys of its own hash tag. In-batch repeats are dropped
        per group, as the dedupe sets are per group (a producer's retry has the original's
        key, hence its partition: docs/events.md).
        """
        groups: dict[int, dict[Any, Sequence[Any]]] = {}
        for tp, records in batch.items():
            groups.setdefault(self.keys.group_for(tp.partition), {})[tp] = records
        return [self.prepare_group(g, part, expected, spans) for g, part in sorted(groups.items())]

    def prepare_group(
        self,
        group: int,
        batch: Mapping[Any, Sequence[Any]],
        expected: Mapping[str, int],
        spans: Mapping[Any, Span] | None = None,
    ) -> Prepared:
        """The CPU half of one group's records (no I/O): decode, classify, digest, drop in-batch repeats.

        `spans` gives each partition's consumer positions before and after its records
        (default: its first record, or the expected offset, and its last record + 1); the
        atomic write refuses a batch that does not start at the offset Redis holds.
        The consumer runs it while Redis applies the previous batch.
        """
        started = time.perf_counter()
        now_us = int(time.time() * 1_000_000)
        valid: list[tuple[Any, int]] = []
        rejected: list[tuple[Any, Rejection]] = []
        ranges: list[tuple[str, int, int, str]] = []
        newest: dict[str, int] = {}
        forward: list[Forward] = []
        max_bytes = self.settings.max_event_bytes
        homes = self._homes
        for tp, records in batch.items():
            field = offset_field(tp.topic, tp.partition)
            floor = expected.get(field, -1)
            # The repartition topic's records are decoded as read on their source topic (a
            # wrong_topic check needs the original topic), and never forwarded again.
            internal = tp.topic == self._internal
            family = "" if internal else self._family[tp.topic]
            here = tp.partition if homes and not internal else -1
            last, top = decode_records(
                records,
                floor,
                family,
                now_us,
                max_bytes,
                self._max_skew_us,
                valid,
                rejected,
                self._source_family if internal else None,
                self._forwarder(here, forward) if here >= 0 else None,
            )
            # Per partition, not per record: where the batch starts and ends, and its last record.
            mark = Fingerprint.of(records[-1]).encode() if last >= 0 else ""
            if spans is not None and tp in spans:
                start, end = spans[tp]
                if end > floor:
                    ranges.append((field, max(start, floor), end, mark))
            elif last >= 0:
                ranges.append((field, floor if floor >= 0 else records[0].offset, last + 1, mark))
            if top >= 0:
                newest[field] = top
        unique, digests = first_copies(valid)
        ent_keys = entity_keys([ev for ev, _ in unique], self._context(time.time(), group))
        return Prepared(
            ranges,
            unique,
            digests,
            rejected,
            len(valid) - len(unique),
            ent_keys,
            time.perf_counter() - started,
            newest,
            group,
            forward=forward,
        )

    def _forwarder(self, here: int, forward: list[Forward]) -> Callable[[Any, Any], bool]:
        """`decode_records`' `forwarded` for partition `here`: an event homed elsewhere joins `forward`."""
        homes, home_of = self._homes, self._home_of
        if len(home_of) > _HOME_CACHE:
            home_of.clear()

        def forwarded(record: Any, event: Any) -> bool:
            key = routing_key(event)
            home = home_of.get(key, -1)
            if home < 0:
                home = home_of[key] = home_partition(key, homes)
            if home == here:
                return False
            forward.append((record, home, key))
            return True

        return forwarded

    def _source_family(self, record: Any) -> str:
        """The family of the topic a repartition-topic record was first read on ("" if its header names none)."""
        for name, value in record.headers or ():
            if name == "source_topic":
                return self._family.get(value.decode(errors="replace"), "")
        return ""

    def read_ahead(self, parts: Sequence[Prepared], pending: Sequence[Sequence[Prepared]] = ()) -> None:
        """Send each group's read (`read_batch`) now, before the batches in `pending` are written.

        `pending` holds the batches not yet written, newest first: at most the one read
        ahead but not folded yet, and the one being written. The read may run before or
        after their writes, so it skips the entity keys they touch: `fold_read` takes those
        states from their folds, and treats their ids as recorded. Every other key their
        writes leave alone. Their folds must be written exactly as folded: `settle` checks.
        """
        for prep in parts:
            if not prep.ranges:
                continue
            prep.basis = [below for batch in pending for below in batch if below.group == prep.group and below.ranges]
            keys = prep.entity_keys
            if prep.basis:
                skip = frozenset().union(*(below.key_set for below in prep.basis))
                keys = [k for k in keys if k not in skip]
            reading = asyncio.ensure_future(self._read(prep.group, keys, prep.digests, time.time()))
            # A batch dropped before its fold (a resync, a stop) never awaits it: not an unhandled error.
            reading.add_done_callback(lambda done: done.cancelled() or done.exception())
            prep.reading = reading

    async def fold_read(self, parts: Sequence[Prepared]) -> None:
        """Fold each group of a batch over what its read ahead returned and the folds of the batches below it.

        A group whose basis has a batch without a fold ahead (it was refused and folded
        again, or never folded ahead) is left to `apply`, which reads and folds afresh.
        """
        for prep in parts:
            if prep.reading is None:
                continue
            read, prep.reading = await prep.reading, None
            basis = prep.basis
            if any(below.folded is None for below in basis):
                continue
            states, recorded = read.states, read.recorded
            if basis:
                for key in prep.entity_keys:
                    for below in basis:
                        if key in below.key_set:
                            states[key] = below.state_after(key)
                            break
                recording = frozenset().union(*(below.digest_set for below in basis))
                recorded = recorded.union(j for j, d in enumerate(prep.digests) if d in recording)
            prep.folded = self._fold(prep.group, prep.unique, prep.digests, BatchRead(states, recorded), time.time())
            prep.states = states

    @staticmethod
    def settle(prep: Prepared) -> None:
        """Once the batch before is written: keep `prep`'s fold ahead only if its basis was written as folded."""
        basis, prep.basis = prep.basis, []  # no chain of batches kept alive
        if any(below.folded is None or below.written is not below.folded.delta for below in basis):
            prep.folded = None

    def _fold(
        self, group: int, unique: list[tuple[Any, int]], digests: list[bytes], read: BatchRead, now_s: float
    ) -> Folded:
        """Fold `unique` less the ids `read` found recorded over the states it read."""
        dropped = len(read.recorded)
        if dropped:
            unique, digests = _without(read.recorded, unique, digests)
        delta = fold(unique, read.states, self._context(now_s, group), self._memo)
        # Remembered before the write is accepted, so that the next batch, folded while this
        # one is written, finds these states. The memo is keyed by raw value: if the write is
        # refused, its entries match nothing Redis holds and are never used.
        self._memo.remember(delta)
        return Folded(delta, unique, digests, dropped, now_s)

    def start_all(self, parts: Sequence[Prepared], expected: Mapping[str, int]) -> asyncio.Future[dict[str, int]]:
        """`apply_all` as a task whose writes start at the caller's next `await`.

        Each group's write is a task of its own created here, so all of them run up to the
        write's send before the caller resumes, rather than after the CPU work the caller
        does next (the next batch's decode and fold).
        """
        writes = [asyncio.ensure_future(self.apply(p, expected)) for p in parts]
        return asyncio.ensure_future(self._settled(writes))

    async def apply_all(self, parts: Sequence[Prepared], expected: Mapping[str, int]) -> dict[str, int]:
        """Apply every group of a batch, concurrently, each in its own atomic write.

        All are awaited even when one fails, so nothing is still writing when the caller
        resyncs; then the first failure is raised (the groups that were applied are seen
        applied by the resync, which reads every offset from Redis).
        """
        return await self.start_all(parts, expected)

    @staticmethod
    async def _settled(writes: Sequence[asyncio.Future[dict[str, int]]]) -> dict[str, int]:
        results = await asyncio.gather(*writes, return_exceptions=True)
        applied: dict[str, int] = {}
        failure: BaseException | None = None
        for r in results:
            if isinstance(r, BaseException):
                # An offset conflict says more than a Stopping of another group: raise it first.
                if failure is None or (isinstance(r, OffsetConflict) and not isinstance(failure, OffsetConflict)):
                    failure = r
            else:
                applied.update(r)
        if failure is not None:
            raise failure
        return applied

    def send_dead_letters(self, prep: Prepared) -> None:
        """Start sending the batch's invalid records to the dead-letter topic (retried through outages).

        The consumer starts it as soon as the batch is prepared, so Kafka's ack arrives while
        the batch before is still being written; `apply` waits for it before its Redis write.
        """
        if prep.rejected and prep.dead_lettered is None:
            rejected = prep.rejected
            sending = asyncio.ensure_future(self._retry(lambda: self.dead_letters.send(rejected), "dead-letter send"))
            # A batch dropped before `apply` (a resync, a stop) never awaits it: not an unhandled error.
            sending.add_done_callback(lambda done: done.cancelled() or done.exception())
            prep.dead_lettered = sending

    def send_forwards(self, prep: Prepared) -> None:
        """Start forwarding the batch's events read off their home partition (retried through outages).

        Like the dead letters: started as soon as the batch is prepared, awaited by `apply`
        before its Redis write records the source offsets.
        """
        if prep.forward and prep.forwarded is None and self.repartition is not None:
            forward, repartition = prep.forward, self.repartition
            sending = asyncio.ensure_future(self._retry(lambda: repartition.send(forward), "repartition send"))
            sending.add_done_callback(lambda done: done.cancelled() or done.exception())
            prep.forwarded = sending

    def send_ahead(self, prep: Prepared) -> None:
        """Start every Kafka send the batch's Redis write waits for: dead letters and forwards."""
        self.send_dead_letters(prep)
        self.send_forwards(prep)

    @staticmethod
    def discard(prep: Prepared) -> None:
        """Forget a prepared batch that will not be applied (a resync drops it): stop its Kafka sends and read.

        Letters (and forwards) already acked stay in their topic; the batch's records are read
        and sent again (those topics are written at least once; the home group's dedupe drops
        a forwarded event's second copy).
        """
        for sending in (prep.dead_lettered, prep.forwarded, prep.reading):
            if sending is not None:
                sending.cancel()

    async def apply(self, prep: Prepared, expected: Mapping[str, int]) -> dict[str, int]:
        """The I/O half: dead letters, then one atomic Redis write (with a read and fold first, unless folded ahead).

        The offset fence is each partition's `expected` value at this moment, so a
        batch prepared while the previous one was in flight fences correctly.
        """
        started = time.perf_counter()
        if not prep.ranges:
            return {}
        offsets = [(field, expected.get(field, -1), new) for field, _, new, _ in prep.ranges]
        firsts = {field: first for field, first, _, _ in prep.ranges}
        marks = {field: mark for field, _, _, mark in prep.ranges if mark}
        rejected, unique, digests = prep.rejected, prep.unique, prep.digests
        # Dead letters, and events forwarded to their home partition, are acked by Kafka
        # before the batch's offsets are recorded in Redis: a crash in between re-sends
        # them rather than losing them.
        self.send_ahead(prep)  # unless the consumer started the sends already
        sends = [sending for sending in (prep.dead_lettered, prep.forwarded) if sending is not None]
        if sends:
            await asyncio.gather(*sends)

        # Repeats inside the batch were dropped by prepare; repeats of earlier batches
        # (redeliveries, another worker's copy) are answered by the read before the fold
        # and left out of it. The atomic write still checks the dedupe sets and refuses a
        # batch naming any id recorded since that read (another worker, after a
        # rebalance): then the batch drops them, reads again and folds again.
        earlier_dups = 0
        folded = prep.folded
        while True:
            if folded is None:
                now_s = time.time()
                read = await self._read(prep.group, prep.entity_keys, digests, now_s)
                folded = self._fold(prep.group, unique, digests, read, now_s)
            earlier_dups += folded.dropped
            unique, digests = folded.unique, folded.digests
            outcome = await self._retry(
                lambda f=folded: self.store.apply(prep.group, f.delta, offsets, f.digests, f.now_s, firsts, marks),
                "redis write",
            )
            if outcome.ok:
                break
            folded = None
            self.metrics.conflicts.labels(outcome.conflict).inc()
            if outcome.conflict in ("offset", "gap"):
                field, stored, *first = outcome.detail.split(" ")
                held = int(stored)
                raise OffsetConflict(field, held if held >= 0 else None, int(first[0]) if first else None)
            if outcome.conflict == "duplicate":
                drop = frozenset(int(i) - 1 for i in outcome.detail.split())
                earlier_dups += len(drop)
                unique, digests = _without(drop, unique, digests)
            # else another worker changed one of these entities since we read: read again.
        delta = prep.written = folded.delta

        m = self.metrics
        for kind, n in delta.processed.items():
            m.processed.labels(kind).inc(n)
        if prep.in_batch_duplicates or earlier_dups:
            m.duplicate.inc(prep.in_batch_duplicates + earlier_dups)
        if delta.late:
            m.late.inc(delta.late)
        if rejected:
            for reason, n in Counter(r.reason for _, r in rejected).items():
                m.invalid.labels(reason).inc(n)
        if prep.forward:
            for topic, n in Counter(rec.topic for rec, _, _ in prep.forward).items():
                m.repartitioned.labels(topic).inc(n)
        m.applied(prep.newest)
        m.batch_seconds.observe(prep.seconds + time.perf_counter() - started)
        return {field: new for field, _, new in offsets}

    def _context(self, now_s: float, group: int) -> FoldContext:
        return FoldContext(now_s, self.windows, self._rules, self.keys.group(group).entity_prefix)

    async def read_batch(self, prep: Prepared) -> BatchRead:
        """The entity states one group of the batch touches and which of its digests Redis already recorded.

        Retried through outages. Read after the previous batch was acknowledged, so its
        digests are among those recorded.
        """
        return await self._read(prep.group, prep.entity_keys, prep.digests, time.time())

    async def _read(self, group: int, keys: list[str], digests: list[bytes], now_s: float) -> BatchRead:
        result: BatchRead = await self._retry(lambda: self.store.read_batch(group, keys, digests, now_s), "redis read")
        return result

    async def load_offsets(self, fields: list[str]) -> dict[str, int]:
        """Redis's next offset to apply per partition field (retried through outages)."""
        result: dict[str, int] = await self._retry(lambda: self.store.load_offsets(fields), "load offsets")
        return result

    async def load_marks(self, fields: list[str]) -> dict[str, LogMark]:
        """Redis's offset and last-record fingerprint per partition field (retried through outages)."""
        result: dict[str, LogMark] = await self._retry(lambda: self.store.load_marks(fields), "load offsets")
        return result

    async def register(self, groups: set[int]) -> None:
        """Add the partition groups to the readers' registry (retried through outages)."""
        await self._retry(lambda: self.store.register(groups), "register partition groups")

    async def anchor(self, field: str, expected: int | None, new: int, lost: int = 0) -> tuple[bool, int | None]:
        """Compare-and-set one partition's applied offset (retried through outages); see AsyncStore.anchor."""
        result: tuple[bool, int | None] = await self._retry(
            lambda: self.store.anchor(field, expected, new, None, lost), "re-anchor offset"
        )
        return result

    async def _retry(self, call: Any, what: str) -> Any:
        """Await call() until it succeeds; Redis/Kafka failures pause the worker, never drop.

        Outages (connection refused, timeouts, a loading Redis, retriable Kafka errors) back
        off from 50 ms to 5 s. Refusals no retry can fix (a wrong password, a missing ACL
        right, a TLS failure) are retried every 30 s with an ERROR line and
        `crm_worker_misconfigured` 1 (stream/worker/health.py). Raises Stopping once the
        worker stops; anything else is raised at once.
        """
        health = self.metrics.health
        delay = 0.05
        failing: str | None = None  # the dependency whose failure this loop is waiting out
        while True:
            try:
                result = await call()
            except (*_REDIS_REFUSED, *_REDIS_DOWN, redis.exceptions.ResponseError) as exc:
                if not isinstance(exc, (*_REDIS_REFUSED, *_REDIS_DOWN)) and not _is_cluster_transient(exc):
                    raise  # a script's or command's own error: a bug, not an outage
                self.metrics.redis_errors.inc()
                failure = describe_redis_error(exc, self.settings)
                wait = _PERMANENT_RETRY_S if failure.permanent else delay
                failing = "redis"
                health.failed(failing, failure.kind, f"{what}: {failure}", failure.permanent, wait)
            except TopicAuthorizationFailedError as exc:
                wait, failing = _PERMANENT_RETRY_S, "kafka"
                health.failed(failing, "acl", f"{what}: Kafka denies access to a topic ({exc})", True, wait)
            except RuntimeError as exc:
                if not _is_closed_transport(exc):
                    raise
                # redis-py's asyncio cluster client closes the connections of nodes it drops when
                # it reloads the slot map (a failover, a moved slot), under calls in flight on them.
                self.metrics.redis_errors.inc()
                failing = "redis"
                health.failed(failing, "unreachable", f"{what}: Redis connection closed under the call", False, delay)
                wait = delay
            except Exception as exc:
                if not _is_kafka_transient(exc):
                    raise
                wait, failing = delay, "kafka"
                reason = str(exc) or type(exc).__name__
                health.failed(failing, "unreachable", f"{what}: Kafka failed ({reason})", False, wait)
            else:
                if failing is not None:
                    health.recovered(failing)
                return result
            if self._stopping.is_set():
                raise Stopping(what)
            try:
                await asyncio.wait_for(self._stopping.wait(), wait)
            except TimeoutError:
                pass
            else:
                raise Stopping(what)
            delay = min(_MAX_BACKOFF_S, delay * 2) * (0.8 + 0.4 * random.random())


# What a Redis Cluster node answers a script while a slot moves or the cluster fails over,
# when redis-py passes it on as a plain error: the scripts fail before their first write
# then (stream/store/lua/apply.lua, step 5), so retrying is safe.
_CLUSTER_TRANSIENT = ("non local key", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "cluster is down")


def _is_cluster_transient(exc: BaseException) -> bool:
    text = str(exc)
    return any(mark in text for mark in _CLUSTER_TRANSIENT)


def _is_closed_transport(exc: RuntimeError) -> bool:
    """The event loop refusing a write on a transport the client closed (uvloop and asyncio say it so)."""
    text = str(exc)
    return "handler is closed" in text or "closed=True" in text or "Transport is closed" in text


def _without(
    drop: frozenset[int], unique: list[tuple[Any, int]], digests: list[bytes]
) -> tuple[list[tuple[Any, int]], list[bytes]]:
    """`unique` and `digests` (parallel lists) without the 0-based positions in `drop`."""
    keep = [j for j in range(len(digests)) if j not in drop]
    return [unique[j] for j in keep], [digests[j] for j in keep]


def _is_kafka_transient(exc: Exception) -> bool:
    return (isinstance(exc, KafkaError) and getattr(exc, "retriable", False)) or isinstance(exc, asyncio.TimeoutError)
