"""`crm-kpi dead-letter list|replay`: read the dead-letter topic, and send records back to their source topic.

The worker writes each rejected record's original bytes and key with headers
`reason`, `detail`, `source_topic`, `source_partition`, `source_offset`
(docs/events.md). Reading uses no consumer group (it commits nothing and
never competes with anything); it reads every partition from the first record
at or after `since` to its end.

Replay re-publishes the original bytes and key to the source topic with a
`replayed_from` header (`<dead-letter topic>:<partition>:<offset>`). By
default only records the worker would now accept - the same `decode` with the
current settings and clock - are sent: a producer's late-fixed type mapping, a
relaxed limit, a `future_timestamp` whose time has come. `everything=True`
sends them all (those still invalid come back to the dead-letter topic).
A record replayed twice within the dedupe horizon is counted once.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from stream.events.decode import Rejection, decode
from stream.kafka.clients import check_kafka, kafka_client_options
from stream.kafka.topics import partitions_of
from stream.settings import Settings

__all__ = ["DeadLetter", "ReplayPlan", "plan_replay", "read_dead_letters", "replay"]


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter topic: where it is, why it is there, and the original record."""

    partition: int
    offset: int
    timestamp_ms: int
    reason: str
    detail: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    key: bytes | None
    value: bytes | None

    def as_json(self) -> dict[str, Any]:
        """JSON-ready: the value as text (invalid UTF-8 replaced), times in ms since the epoch."""
        return {
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "reason": self.reason,
            "detail": self.detail,
            "source_topic": self.source_topic,
            "source_partition": self.source_partition,
            "source_offset": self.source_offset,
            "key": None if self.key is None else self.key.decode(errors="replace"),
            "value": None if self.value is None else self.value.decode(errors="replace"),
        }


def _headers(raw: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode(errors="replace") for k, v in raw or ()}


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


async def read_dead_letters(
    settings: Settings,
    *,
    since_ms: int | None = None,
    reasons: Collection[str] = (),
    source_topics: Collection[str] = (),
    limit: int | None = None,
) -> list[DeadLetter]:
    """Dead letters in (timestamp, partition, offset) order, filtered; at most `limit` (the latest ones).

    Raises KafkaAccessError (one line) if Kafka cannot be reached or refuses the credentials.
    """
    topic = settings.dead_letter_topic
    await check_kafka(settings)
    admin = AIOKafkaAdminClient(**kafka_client_options(settings))
    await admin.start()
    try:
        known = await partitions_of(admin, [topic])
    finally:
        await admin.close()
    partitions = [TopicPartition(topic, p) for p in known.get(topic, [])]
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(**kafka_client_options(settings), enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list[DeadLetter] = []
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        if since_ms is None:
            await consumer.seek_to_beginning(*partitions)
        else:
            starts = await consumer.offsets_for_times({tp: since_ms for tp in partitions})
            for tp in partitions:
                found = starts.get(tp)
                consumer.seek(tp, found.offset if found is not None else ends[tp])
        # Until the end offsets, and then until a poll comes back empty: a broker may report
        # an end offset below records already acknowledged (Tansu does, for a moment).
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for rec in records:
                    h = _headers(rec.headers)
                    letter = DeadLetter(
                        tp.partition, rec.offset, rec.timestamp, h.get("reason", ""), h.get("detail", ""),
                        h.get("source_topic", ""), _int(h.get("source_partition")), _int(h.get("source_offset")),
                        rec.key, rec.value,
                    )  # fmt: skip
                    if reasons and letter.reason not in reasons:
                        continue
                    if source_topics and letter.source_topic not in source_topics:
                        continue
                    out.append(letter)
            if not batch:
                ends = await consumer.end_offsets(partitions)
                if all([await consumer.position(tp) >= ends[tp] for tp in partitions]):
                    break
    finally:
        await consumer.stop()
    out.sort(key=lambda d: (d.timestamp_ms, d.partition, d.offset))
    return out[-limit:] if limit is not None else out


@dataclass(frozen=True)
class ReplayPlan:
    """Which dead letters a replay sends, and why the others stay."""

    send: list[DeadLetter]
    keep: list[tuple[DeadLetter, Rejection]]


def plan_replay(
    settings: Settings, letters: Sequence[DeadLetter], everything: bool, now_s: float | None = None
) -> ReplayPlan:
    """Split `letters`: those the worker would accept now (all of them with `everything`), and the rest."""
    families = settings.event_topics()
    now_us = int((time.time() if now_s is None else now_s) * 1_000_000)
    skew_us = int(settings.max_future_skew * 1_000_000)
    send: list[DeadLetter] = []
    keep: list[tuple[DeadLetter, Rejection]] = []
    for letter in letters:
        family = families.get(letter.source_topic)
        if family is None:
            keep.append((letter, Rejection("unknown_source", f"{letter.source_topic!r} is not an event topic")))
            continue
        verdict = decode(letter.value, family, now_us, settings.max_event_bytes, skew_us)
        if isinstance(verdict, Rejection) and not everything:
            keep.append((letter, verdict))
        else:
            send.append(letter)
    return ReplayPlan(send, keep)


async def replay(settings: Settings, letters: Sequence[DeadLetter]) -> int:
    """Re-publish each record to its source topic (key and bytes as they were); returns how many Kafka acked.

    Raises KafkaAccessError (one line) before sending anything if Kafka denies Write on a source topic.
    """
    if not letters:
        return 0
    await check_kafka(settings, write=sorted({letter.source_topic for letter in letters}))
    producer = AIOKafkaProducer(**kafka_client_options(settings), acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = []
        for letter in letters:
            origin = f"{settings.dead_letter_topic}:{letter.partition}:{letter.offset}".encode()
            futures.append(
                await producer.send(
                    letter.source_topic, value=letter.value, key=letter.key, headers=[("replayed_from", origin)]
                )
            )
        for fut in futures:
            await fut
    finally:
        await producer.stop()
    return len(letters)
