"""One batch of Kafka records, end to end: decode, dead-letter, dedupe, fold, apply.

Exactness (SPEC §6) rests on one atomic Redis call per batch that
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
from typing import Any

import redis.exceptions

from stream.aggregate import FoldContext, entity_keys, fold
from stream.config import Settings
from stream.deadletter import DeadLetters
from stream.decode import Decoded, Rejection, decode
from stream.keys import Keys
from stream.opmetrics import WorkerMetrics
from stream.store import AsyncStore, event_digest
from stream.windows import Window

__all__ = ["BatchProcessor", "OffsetConflict", "offset_field"]

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
        self._lead_sources = frozenset(settings.lead_sources)
        self._max_skew_us = int(settings.max_future_skew * 1_000_000)

    async def process(self, batch: Mapping[Any, Sequence[Any]], expected: Mapping[str, int]) -> dict[str, int]:
        """Apply `batch` ({TopicPartition: records}); return the new next offset per partition field.

        `expected` is each partition's next offset as Redis last said (-1: none
        stored). Records below it were applied already and are skipped.
        Raises OffsetConflict when Redis disagrees (the caller re-seeks).
        """
        started = time.perf_counter()
        now_us = int(time.time() * 1_000_000)
        valid: list[tuple[Any, int]] = []
        rejected: list[tuple[Any, Rejection]] = []
        offsets: list[tuple[str, int, int]] = []
        max_bytes = self.settings.max_event_bytes
        for tp, records in batch.items():
            field = offset_field(tp.topic, tp.partition)
            floor = expected.get(field, -1)
            family = self._family[tp.topic]
            last = -1
            for rec in records:
                if rec.offset < floor:
                    continue
                last = rec.offset
                out = decode(rec.value, family, now_us, max_bytes, self._max_skew_us)
                if type(out) is Decoded:
                    valid.append((out.event, out.t_us))
                else:
                    rejected.append((rec, out))  # type: ignore[arg-type]
            if last >= 0:
                offsets.append((field, floor, last + 1))
        if not offsets:
            return {}

        # Dead letters are acked by Kafka before the batch's offsets are recorded
        # in Redis: a crash in between re-sends them rather than losing them.
        if rejected:
            await self._retry(lambda: self.dead_letters.send(rejected), "dead-letter send")

        digests: list[bytes] = []
        unique: list[tuple[Any, int]] = []
        index: set[bytes] = set()
        for ev, t_us in valid:
            d = event_digest(ev.event_id)
            if d not in index:
                index.add(d)
                digests.append(d)
                unique.append((ev, t_us))
        in_batch_dups = len(valid) - len(unique)
        ent_keys = entity_keys([ev for ev, _ in unique], self.keys)

        while True:
            now_s = time.time()
            seen, states = await self._retry(lambda t=now_s: self.store.read(digests, ent_keys, t), "redis read")
            if seen:
                fresh = [(ev, t) for (ev, t), d in zip(unique, digests, strict=True) if d not in seen]
                fresh_digests = [d for d in digests if d not in seen]
            else:
                fresh, fresh_digests = unique, digests
            ctx = FoldContext(now_s, self.windows, self._lead_sources, self.settings.sla, self.keys)
            delta = fold(fresh, states, ctx)
            outcome = await self._retry(
                lambda d=delta, f=fresh_digests, t=now_s: self.store.apply(d, offsets, f, t), "redis write"
            )
            if outcome.ok:
                break
            self.metrics.conflicts.labels(outcome.conflict).inc()
            if outcome.conflict == "offset":
                field, _, stored = outcome.detail.partition(" ")
                raise OffsetConflict(field, int(stored))
            # Another worker recorded one of these ids or entities since we read: read again.

        m = self.metrics
        for kind, n in delta.processed.items():
            m.processed.labels(kind).inc(n)
        if in_batch_dups or seen:
            m.duplicate.inc(in_batch_dups + len(seen))
        if delta.late:
            m.late.inc(delta.late)
        if rejected:
            for reason, n in Counter(r.reason for _, r in rejected).items():
                m.invalid.labels(reason).inc(n)
        if delta.newest_us is not None:
            newest = delta.newest_us / 1e6
            if m.newest_event_s is None or newest > m.newest_event_s:
                m.newest_event_s = newest
        m.batch_seconds.observe(time.perf_counter() - started)
        return {field: new for field, _, new in offsets}

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
    from aiokafka.errors import KafkaError

    return (isinstance(exc, KafkaError) and getattr(exc, "retriable", False)) or isinstance(exc, asyncio.TimeoutError)
