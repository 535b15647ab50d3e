"""The dead-letter topic (docs/events.md): original bytes plus headers saying why."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from stream.events.decode import Rejection

__all__ = ["DeadLetters"]


class DeadLetters:
    """Sends rejected records to the dead-letter topic; `send` returns once Kafka acked all."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self.topic = topic

    async def send(self, rejected: Sequence[tuple[Any, Rejection]]) -> None:
        """Publish each (consumer record, rejection); raises if Kafka does not ack."""
        futures = []
        for record, why in rejected:
            headers = [
                ("reason", why.reason.encode()),
                ("detail", why.detail.encode()),
                ("source_topic", record.topic.encode()),
                ("source_partition", str(record.partition).encode()),
                ("source_offset", str(record.offset).encode()),
            ]
            futures.append(await self._producer.send(self.topic, value=record.value, key=record.key, headers=headers))
        if futures:
            await asyncio.gather(*futures)
