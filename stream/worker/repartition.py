"""The repartition topic (Redis Cluster mode): events read on another partition than their home.

In cluster mode partition p of every event topic is partition group p (one hash tag), and a
join or a dedupe is exact only when every event of a customer, and every copy of an event,
meets in one group. An event a producer keyed otherwise (by event_id, librdkafka's crc32
partitioner, a retry under another key) is read on a partition that is not its home
(`stream.kafka.routing`): the worker does not fold it there but forwards its original bytes
to partition `home` of the repartition topic, keyed by its routing key, as Kafka Streams
does. Partition p of that topic feeds group p like any event topic. The forward is acked
before the source batch's Redis write records the source offsets (the rule of the dead
letters, whose batched send it shares): a crash in between forwards again, and the home
group's dedupe drops the second copy (same event_id).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from stream.worker.dead_letters import send_batched, source_headers

__all__ = ["Forward", "Repartition"]

Forward = tuple[Any, int, bytes]
"""A record to forward: (consumer record, home partition, routing key)."""


class Repartition:
    """Forwards records to their home partition of the repartition topic; `send` returns once Kafka acked all."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self.topic = topic

    async def send(self, forwards: Sequence[Forward]) -> None:
        """Publish each record's original value to partition `home`, with headers naming where it was read."""
        if forwards:
            await send_batched(
                self._producer,
                self.topic,
                [(home, key, record.value, source_headers(record)) for record, home, key in forwards],
            )
