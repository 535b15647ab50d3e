"""Is a partition's Kafka log still the one Redis's applied offset counts? (docs/delivery.md)

Redis records, with each partition's next offset to apply, a fingerprint of the last
record applied: its offset, timestamp and a digest of its key and value. On every
resync the worker asks the broker where the log starts and ends and fetches the record
at that offset (`LogProbe`, a group-less consumer, so the group's positions and
assignment are never touched), and `judge` compares. The decisions are taken in
`stream.worker.consumer` and by `crm-kpi offsets`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from stream.store import LogMark

__all__ = ["Fingerprint", "LogProbe", "Verdict", "judge", "needs_record"]


@dataclass(frozen=True)
class Fingerprint:
    """One record's identity: offset, timestamp (ms) and an 8-byte digest of key and value."""

    offset: int
    timestamp: int
    digest: str

    @classmethod
    def of(cls, record: Any) -> Fingerprint:
        """The fingerprint of an aiokafka ConsumerRecord (key and value may be None)."""
        h = hashlib.blake2b(digest_size=8)
        for part in (record.key, record.value):
            h.update(b"\xff" if part is None else len(part).to_bytes(4, "big") + part)
        return cls(record.offset, int(record.timestamp), h.hexdigest())

    def encode(self) -> str:
        return f"{self.offset}:{self.timestamp}:{self.digest}"

    @classmethod
    def parse(cls, text: str | None) -> Fingerprint | None:
        """The fingerprint `encode` wrote; None for None or anything else."""
        if not text:
            return None
        offset, _, rest = text.partition(":")
        timestamp, _, digest = rest.partition(":")
        try:
            return cls(int(offset), int(timestamp), digest)
        except ValueError:
            return None


class Verdict(Enum):
    """What a resync found for one partition."""

    OK = "ok"
    """The log holds the applied records (or nothing contradicts it): resume from Redis's offset."""
    UNANCHORED = "unanchored"
    """Redis holds no offset: rebuild from the log's start offset."""
    RETENTION_LOSS = "retention_loss"
    """Records after the applied offset were deleted by retention before they were applied."""
    LOG_BEHIND = "log_behind"
    """The log ends below the applied offset: the topic was recreated or truncated."""
    LOG_REPLACED = "log_replaced"
    """The log holds another record where the last applied one was: recreated or truncated, then refilled."""

    @property
    def blocks(self) -> bool:
        """True when the worker must not resume on its own (an operator decides)."""
        return self in (Verdict.LOG_BEHIND, Verdict.LOG_REPLACED)


def needs_record(mark: LogMark, start: int, end: int) -> int | None:
    """The offset whose record `judge` must compare (the last applied one), if it can be checked."""
    last = Fingerprint.parse(mark.last)
    if mark.next is None or last is None or mark.next > end or last.offset < start or last.offset >= end:
        return None
    return last.offset


def judge(mark: LogMark, start: int, end: int, found: Fingerprint | None = None) -> Verdict:
    """Compare Redis's record of a partition with its log [start, end) (start: the log start offset).

    `found` is the record the log holds at `needs_record(...)`'s offset (None when that record
    is missing or needs none). A fingerprinted record already deleted by retention cannot be
    compared: the offset is then only checked against the bounds.
    """
    if mark.next is None:
        return Verdict.UNANCHORED
    if mark.next > end:
        return Verdict.LOG_BEHIND
    if needs_record(mark, start, end) is not None and found != Fingerprint.parse(mark.last):
        return Verdict.LOG_REPLACED
    if mark.next < start:
        return Verdict.RETENTION_LOSS
    return Verdict.OK


class LogProbe:
    """A group-less consumer that reads log bounds and the record at a given offset."""

    def __init__(self, kafka_options: Mapping[str, Any], request_timeout_ms: int = 15_000) -> None:
        self._consumer = AIOKafkaConsumer(
            **kafka_options,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
            fetch_max_wait_ms=100,
            # One record per partition is wanted; the broker still returns a whole record batch.
            max_partition_fetch_bytes=256 * 1024,
            request_timeout_ms=request_timeout_ms,
        )
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def bounds(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        """(log start offset, log end offset) per partition; raises KafkaError when the broker cannot say."""
        if not partitions:
            return {}
        async with self._lock:
            begin = await self._consumer.beginning_offsets(list(partitions))
            end = await self._consumer.end_offsets(list(partitions))
        return {tp: (begin[tp], end[tp]) for tp in partitions}

    async def records_at(
        self, wanted: Mapping[TopicPartition, int], timeout_s: float = 10.0
    ) -> dict[TopicPartition, Fingerprint | None]:
        """The fingerprint of the record at each wanted offset; None where the log has no record there.

        A partition missing from the result could not be read within `timeout_s`.
        """
        if not wanted:
            return {}
        found: dict[TopicPartition, Fingerprint | None] = {}
        async with self._lock:
            consumer = self._consumer
            consumer.assign(list(wanted))
            try:
                for tp, offset in wanted.items():
                    consumer.seek(tp, offset)
                deadline = time.monotonic() + timeout_s
                while len(found) < len(wanted) and time.monotonic() < deadline:
                    pending = [tp for tp in wanted if tp not in found]
                    try:
                        batch = await consumer.getmany(*pending, timeout_ms=200)
                    except OffsetOutOfRangeError as exc:
                        for tp in exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}:
                            found[tp] = None  # deleted (or never written) since the bounds were read
                        continue
                    except KafkaError:
                        await asyncio.sleep(0.2)
                        continue
                    for tp, records in batch.items():
                        if tp in found or not records:
                            continue
                        # The first record at or after the offset: another offset means the log has none there.
                        first = records[0]
                        found[tp] = Fingerprint.of(first) if first.offset == wanted[tp] else None
                        consumer.pause(tp)
            finally:
                consumer.assign([])
        return found
