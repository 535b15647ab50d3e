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
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from stream.store import LogMark

__all__ = ["Fingerprint", "LogProbe", "LogView", "Verdict", "fetch_target", "judge", "needs_record"]


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


@dataclass(frozen=True)
class LogView:
    """What the broker says of one partition's log."""

    start: int
    """The log start offset (records below it were deleted by retention, or never written)."""
    end: int
    """The log end offset (the high watermark): the next offset to be written."""
    record: Fingerprint | None
    """The record at the offset asked for, if the log holds one there."""
    fetched: bool
    """True when a fetch answered for the partition (with records, none, or "out of range")."""


def fetch_target(mark: LogMark) -> int:
    """The offset to read a partition at: its last applied record (to compare it), else its next one."""
    last = Fingerprint.parse(mark.last)
    if mark.next is not None and last is not None:
        return last.offset
    return mark.next or 0


class LogProbe:
    """A group-less consumer that reads log bounds and the record at a given offset."""

    def __init__(self, kafka_options: Mapping[str, Any], request_timeout_ms: int = 15_000) -> None:
        self._consumer = AIOKafkaConsumer(
            **kafka_options,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
            fetch_max_wait_ms=100,
            # One record per partition is wanted, but a partition's answer is cut at this size and a
            # cut record batch cannot be read: as large as the worker's own fetches.
            max_partition_fetch_bytes=8 * 1024 * 1024,
            request_timeout_ms=request_timeout_ms,
        )
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def inspect(
        self, targets: Mapping[TopicPartition, int], timeout_s: float = 10.0
    ) -> dict[TopicPartition, LogView]:
        """Each partition's log bounds, and the record at its target offset (or at the log start if below).

        The end offset is the high watermark of a fetch, not only ListOffsets' answer: some
        Kafka-compatible brokers (Tansu) answer ListOffsets "latest" wrongly. A partition no
        fetch answered within `timeout_s` keeps ListOffsets' end, with `fetched` False.
        Raises KafkaError when the broker cannot give the bounds.
        """
        if not targets:
            return {}
        tps = list(targets)
        async with self._lock:
            consumer = self._consumer
            begin = await consumer.beginning_offsets(tps)
            end = await consumer.end_offsets(tps)
            at = {tp: max(offset, begin[tp]) for tp, offset in targets.items()}
            found: dict[TopicPartition, Fingerprint | None] = {}  # partitions a fetch answered for
            consumer.assign(tps)
            try:
                for tp, offset in at.items():
                    consumer.seek(tp, offset)
                deadline = time.monotonic() + timeout_s
                while len(found) < len(tps) and time.monotonic() < deadline:
                    pending = [tp for tp in tps if tp not in found]
                    try:
                        batch = await consumer.getmany(*pending, timeout_ms=200)
                    except OffsetOutOfRangeError as exc:
                        for tp in exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}:
                            found[tp] = None  # the log ends below (or starts above) the offset
                            consumer.pause(tp)
                        continue
                    except KafkaError:
                        # E.g. a record batch larger than a fetch (aiokafka then steps past it): read again.
                        for tp in pending:
                            consumer.seek(tp, at[tp])
                        await asyncio.sleep(0.2)
                        continue
                    for tp in pending:
                        records = batch.get(tp)
                        if records:
                            # The first record at or after the offset: another offset means none there.
                            first = records[0]
                            found[tp] = Fingerprint.of(first) if first.offset == at[tp] else None
                        elif (high := consumer.highwater(tp)) is not None and at[tp] >= high:
                            found[tp] = None  # a fetch answered: the log ends at or below the offset
                        else:
                            # No answer yet, or an answer without this partition's records although
                            # the log holds some there: a fetch response is cut at fetch_max_bytes, and
                            # a broker answers the partitions that did not fit with no records (Tansu
                            # also leaves some out of an answer to many partitions). Fetch again.
                            continue
                        consumer.pause(tp)
                highwater = {tp: consumer.highwater(tp) for tp in tps}
            finally:
                consumer.assign([])
        out = {}
        for tp in tps:
            hw = highwater[tp]
            out[tp] = LogView(begin[tp], hw if hw is not None else end[tp], found.get(tp), tp in found)
        return out
