"""One batch of Kafka records, end to end: decode, dead-letter, dedupe, fold, apply.

Exactness (docs/delivery.md) rests on one atomic Redis call per batch that
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions
from aiokafka.errors import KafkaError

from stream.events.decode import Rejection, decode
from stream.events.fold import FoldContext, FoldMemo, entity_keys, fold
from stream.events.windows import Window
from stream.kpis import fold_rules
from stream.settings import Settings
from stream.store import AsyncStore, Keys, event_digest
from stream.worker.dead_letters import DeadLetters
from stream.worker.metrics import WorkerMetrics

__all__ = ["BatchProcessor", "OffsetConflict", "Prepared", "offset_field"]

log = logging.getLogger(__name__)

_REDIS_DOWN = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    OSError,
)
_MAX_BACKOFF_S = 5.0


def offset_field(topic: str, partition: int) -> str:
    """Field of the offsets hash for one partition."""
    return f"{topic}:{partition}"


class OffsetConflict(Exception):
    """Redis holds another applied offset than expected: another worker applied these records."""

    def __init__(self, field: str, stored: int) -> None:
        super().__init__(f"{field} already applied up to {stored}")
        self.field = field
        self.stored = stored


@dataclass
class Prepared:
    """A decoded batch waiting for its Redis write."""

    ranges: list[tuple[str, int]]  # (partition field, next offset after the batch)
    unique: list[tuple[Any, int]]  # (valid event, occurred_at µs), first copy of each id
    digests: list[bytes]
    rejected: list[tuple[Any, Rejection]]
    in_batch_duplicates: int
    entity_keys: list[str]
    seconds: float
    newest: dict[str, int]  # partition field -> newest occurred_at (µs) of its valid records


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
    ) -> None:
        self.settings = settings
        self.store = store
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.windows = windows
        self.keys = keys
        self._family = settings.event_topics()
        self._rules = fold_rules(settings.kpi_config())
        self._max_skew_us = int(settings.max_future_skew * 1_000_000)
        self._memo = FoldMemo()

    async def process(self, batch: Mapping[Any, Sequence[Any]], expected: Mapping[str, int]) -> dict[str, int]:
        """Apply `batch` ({TopicPartition: records}); return the new next offset per partition field.

        `expected` is each partition's next offset as Redis last said (-1: none
        stored). Records below it were applied already and are skipped.
        Raises OffsetConflict when Redis disagrees (the caller re-seeks).
        """
        return await self.apply(self.prepare(batch, expected), expected)

    def prepare(self, batch: Mapping[Any, Sequence[Any]], expected: Mapping[str, int]) -> Prepared:
        """The CPU half of a batch (no I/O): decode, classify, digest, drop in-batch repeats.

        The consumer runs it while Redis applies the previous batch.
        """
        started = time.perf_counter()
        now_us = int(time.time() * 1_000_000)
        valid: list[tuple[Any, int]] = []
        rejected: list[tuple[Any, Rejection]] = []
        ranges: list[tuple[str, int]] = []
        newest: dict[str, int] = {}
        max_bytes = self.settings.max_event_bytes
        for tp, records in batch.items():
            field = offset_field(tp.topic, tp.partition)
            floor = expected.get(field, -1)
            family = self._family[tp.topic]
            last = -1
            top = -1
            for rec in records:
                if rec.offset < floor:
                    continue
                last = rec.offset
                out = decode(rec.value, family, now_us, max_bytes, self._max_skew_us)
                if type(out) is tuple:
                    valid.append(out)
                    if out[1] > top:
                        top = out[1]
                else:
                    rejected.append((rec, out))  # type: ignore[arg-type]
            if last >= 0:
                ranges.append((field, last + 1))
            if top >= 0:
                newest[field] = top
        digests: list[bytes] = []
        unique: list[tuple[Any, int]] = []
        index: set[bytes] = set()
        for ev, t_us in valid:
            d = event_digest(ev.event_id)
            if d not in index:
                index.add(d)
                digests.append(d)
                unique.append((ev, t_us))
        ent_keys = entity_keys([ev for ev, _ in unique], self._context(time.time()))
        return Prepared(
            ranges, unique, digests, rejected, len(valid) - len(unique), ent_keys, time.perf_counter() - started, newest
        )

    async def apply(
        self, prep: Prepared, expected: Mapping[str, int], states: Mapping[str, str | None] | None = None
    ) -> dict[str, int]:
        """The I/O half: dead letters, then one atomic Redis write (plus a read of entity states).

        The offset fence is each partition's `expected` value at this moment, so a
        batch prepared while the previous one was in flight fences correctly.
        `states` may carry the entity states the caller already read for this batch.
        """
        started = time.perf_counter()
        if not prep.ranges:
            return {}
        offsets = [(field, expected.get(field, -1), new) for field, new in prep.ranges]
        rejected, unique, digests = prep.rejected, prep.unique, prep.digests
        # Dead letters are acked by Kafka before the batch's offsets are recorded
        # in Redis: a crash in between re-sends them rather than losing them.
        if rejected:
            await self._retry(lambda: self.dead_letters.send(rejected), "dead-letter send")

        # Optimistic: most duplicates are caught in-batch above; the atomic write
        # checks the dedupe sets and refuses the batch naming any id already
        # recorded, and only then does the batch pay a second round trip.
        earlier_dups = 0
        while True:
            now_s = time.time()
            if states is None:
                states = await self.read_states(prep)
            delta = fold(unique, states, self._context(now_s), self._memo)
            outcome = await self._retry(
                lambda d=delta, f=digests, t=now_s: self.store.apply(d, offsets, f, t), "redis write"
            )
            if outcome.ok:
                self._memo.remember(delta)
                break
            states = None
            self.metrics.conflicts.labels(outcome.conflict).inc()
            if outcome.conflict == "offset":
                field, _, stored = outcome.detail.partition(" ")
                raise OffsetConflict(field, int(stored))
            if outcome.conflict == "duplicate":
                drop = {int(i) - 1 for i in outcome.detail.split()}
                earlier_dups += len(drop)
                unique = [x for j, x in enumerate(unique) if j not in drop]
                digests = [d for j, d in enumerate(digests) if j not in drop]
            # else another worker changed one of these entities since we read: read again.

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
        m.applied(prep.newest)
        m.batch_seconds.observe(prep.seconds + time.perf_counter() - started)
        return {field: new for field, _, new in offsets}

    def _context(self, now_s: float) -> FoldContext:
        return FoldContext(now_s, self.windows, self._rules, self.keys.entity_prefix)

    async def read_states(self, prep: Prepared) -> dict[str, str | None]:
        """The current Redis states of the entities the batch touches (retried through outages)."""
        keys = prep.entity_keys
        result: dict[str, str | None] = await self._retry(lambda: self.store.read_states(keys), "redis read")
        return result

    async def load_offsets(self, fields: list[str]) -> dict[str, int]:
        """Redis's next offset to apply per partition field (retried through outages)."""
        result: dict[str, int] = await self._retry(lambda: self.store.load_offsets(fields), "load offsets")
        return result

    async def _retry(self, call: Any, what: str) -> Any:
        """Await call() until it succeeds; Redis/Kafka outages pause the worker, never drop."""
        delay = 0.05
        while True:
            try:
                return await call()
            except _REDIS_DOWN as exc:
                self.metrics.redis_errors.inc()
                log.warning("%s failed (%s); retrying in %.2fs", what, exc, delay)
            except Exception as exc:
                if not _is_kafka_transient(exc):
                    raise
                log.warning("%s failed (%s); retrying in %.2fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(_MAX_BACKOFF_S, delay * 2) * (0.8 + 0.4 * random.random())


def _is_kafka_transient(exc: Exception) -> bool:
    return (isinstance(exc, KafkaError) and getattr(exc, "retriable", False)) or isinstance(exc, asyncio.TimeoutError)
