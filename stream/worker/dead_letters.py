"""The dead-letter topic (docs/events.md): original bytes plus headers saying why."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from stream.events.decode import Rejection

__all__ = ["DeadLetters", "Outgoing", "send_batched", "source_headers"]


class DeadLetters:
    """Sends rejected records to the dead-letter topic; `send` returns once Kafka acked all."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, internal: str | None = None) -> None:
        """`internal`: the repartition topic, whose records name their original topic, partition and
        offset in their own headers: a letter of one names those (so `crm-kpi dead-letter replay`
        sends it back to its event topic) and where it was forwarded (`forwarded_from`)."""
        self._producer = producer
        self.topic = topic
        self._internal = internal
        self._partitioner = DefaultPartitioner()

    async def send(self, rejected: Sequence[tuple[Any, Rejection]]) -> None:
        """Publish each (consumer record, rejection); raises if Kafka does not ack.

        A record lands on the partition the producer would have chosen (its key's hash,
        a random one without a key); `send_batched` sends them.
        """
        if not rejected:
            return
        producer = self._producer
        partitions = sorted(await producer.partitions_for(self.topic))
        by_key: dict[bytes, int] = {}  # one hash per key: invalid records repeat their producers' keys
        records: list[Outgoing] = []
        for record, why in rejected:
            key = record.key
            if key is None:
                partition = self._partitioner(None, partitions, partitions)
            else:
                partition = by_key.get(key, -1)
                if partition < 0:
                    partition = by_key[key] = self._partitioner(key, partitions, partitions)
            headers = [("reason", why.reason.encode()), ("detail", why.detail.encode()), *self._origin(record)]
            records.append((partition, key, record.value, headers))
        await send_batched(producer, self.topic, records)

    def _origin(self, record: Any) -> list[tuple[str, bytes]]:
        own = source_headers(record)
        if record.topic != self._internal:
            return own
        carried = [(name, value) for name, value in record.headers or () if name in _SOURCE]
        if {name for name, _ in carried} != _SOURCE:
            return own  # not forwarded by a worker: name the repartition topic itself
        where = f"{record.topic}:{record.partition}:{record.offset}".encode()
        return [*carried, ("forwarded_from", where)]


_SOURCE = frozenset({"source_topic", "source_partition", "source_offset"})


Outgoing = tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]
"""A record to send: (partition, key, value, headers)."""


def source_headers(record: Any) -> list[tuple[str, bytes]]:
    """Headers naming where a consumer record was read: its topic, partition and offset."""
    return [
        ("source_topic", record.topic.encode()),
        ("source_partition", str(record.partition).encode()),
        ("source_offset", str(record.offset).encode()),
    ]


async def send_batched(producer: AIOKafkaProducer, topic: str, records: Iterable[Outgoing]) -> None:
    """Send records to their partitions of `topic`; return once Kafka acked all (raise if not).

    Records go in record batches filled here, one per partition (more when one is full),
    and the call waits once for all of them. `producer.send` per record cost ~10 µs of the
    worker's CPU each (a future, the partitioner, the accumulator): with half the records
    invalid, a third of the worker (issue #11). A record without key and value (a bare
    tombstone) is sent as it is, which `producer.send` refuses. Used for dead letters and
    for records forwarded through the repartition topic (`stream.worker.repartition`).
    """
    batches: dict[int, Any] = {}  # partition -> the aiokafka BatchBuilder being filled
    futures = []
    for partition, key, value, headers in records:
        batch = batches.get(partition)
        if batch is None:
            batch = batches[partition] = producer.create_batch()
        if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
            # Full (the producer's max_batch_size): send it, and start the next with this
            # record (a batch's first record always fits, however large).
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            batch = batches[partition] = producer.create_batch()
            batch.append(timestamp=None, key=key, value=value, headers=headers)
    for partition, batch in batches.items():
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*futures)
