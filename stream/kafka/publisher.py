"""Publishing events to their topics: JSON Lines files (`crm-kpi publish`) and generators."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from schemas import TOPIC_FAMILY, validate_event_json
from stream.events.decode import Rejection, decode
from stream.kafka.clients import check_kafka, kafka_client_options
from stream.kafka.routing import routing_key
from stream.settings import Settings

__all__ = ["BadLine", "PublishSummary", "message_key", "publish_payloads", "read_jsonl"]


@dataclass(frozen=True)
class BadLine:
    """A line of the input that is not a valid event."""

    number: int
    error: str


@dataclass(frozen=True)
class PublishSummary:
    """What a publish run did."""

    published: int
    skipped: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0


def message_key(event: Any) -> bytes:
    """The recommended message key (docs/events.md): customer_id, else the event's own id.

    The routing key (`stream.kafka.routing`): with the default partitioner, every event
    published here is read on its home partition and never needs the repartition hop.
    """
    return routing_key(event)


def read_jsonl(
    path: Path, settings: Settings, now_s: float | None = None
) -> tuple[list[tuple[str, bytes, bytes]], list[BadLine]]:
    """Validate every line: ([(type, key, raw bytes)], [bad lines]); blank lines are ignored.

    A line passes only if the worker would accept it: the schema, and the worker's own
    rules (`stream.events.decode`: size limit, `occurred_at` at most CRM_KPI_MAX_FUTURE_SKEW
    ahead of `now_s`, default the clock), so nothing published here is dead-lettered there.
    """
    now_us = int((time.time() if now_s is None else now_s) * 1_000_000)
    max_skew_us = int(settings.max_future_skew * 1_000_000)
    good: list[tuple[str, bytes, bytes]] = []
    bad: list[BadLine] = []
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            raw = line.strip()
            if not raw:
                continue
            try:
                event = validate_event_json(raw)
            except ValidationError as exc:
                first = exc.errors(include_url=False)[0]
                where = ".".join(str(p) for p in first["loc"]) or "event"
                bad.append(BadLine(number, f"{where}: {first['msg']}"))
                continue
            verdict = decode(raw, TOPIC_FAMILY[event.type], now_us, settings.max_event_bytes, max_skew_us)
            if isinstance(verdict, Rejection):
                bad.append(BadLine(number, f"{verdict.reason}: {verdict.detail}"))
                continue
            good.append((event.type, message_key(event), raw))
    return good, bad


async def publish_payloads(
    settings: Settings,
    items: Iterable[tuple[str, bytes, bytes]],
    progress: Callable[[int], None] | None = None,
    rate: float | None = None,
) -> int:
    """Send (type, key, value) to each type's topic; optional events/s pacing; returns count sent.

    Raises KafkaAccessError (one line) before sending anything if Kafka cannot be reached,
    refuses the credentials, or denies Write on an event topic.
    """
    await check_kafka(settings, write=list(settings.event_topics()))
    producer = AIOKafkaProducer(**kafka_client_options(settings), acks="all", linger_ms=10, max_batch_size=1 << 20)
    await producer.start()
    sent = 0
    started = time.monotonic()
    try:
        pending = []
        for event_type, key, value in items:
            topic = settings.topic(TOPIC_FAMILY[event_type])
            pending.append(await producer.send(topic, value=value, key=key))
            sent += 1
            if len(pending) >= 5000:
                for fut in pending:
                    await fut
                pending.clear()
            if progress is not None and sent % 1000 == 0:
                progress(1000)
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0.005:
                    import asyncio

                    await asyncio.sleep(ahead)
        for fut in pending:
            await fut
        if progress is not None:
            progress(sent % 1000)
    finally:
        await producer.stop()
    return sent


def encode_event(event: dict[str, Any]) -> bytes:
    """Serialize an event dict as UTF-8 JSON bytes."""
    return orjson.dumps(event)
