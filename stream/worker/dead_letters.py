"""The dead-letter topic (docs/events.md): original bytes plus headers saying why."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from stream.events.decode import Rejection

__all__ = ["DeadLetters"]


class DeadLetters:
    """Sends rejected records to the dead-letter topic; `send` returns once Kafka acked all."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self.topic = topic
        self._partitioner = DefaultPartitioner()

    async def send(self, rejected: Sequence[tuple[Any, Rejection]]) -> None:
        """Publish each (consumer record, rejection); raises if Kafka does not ack.

        Records go in record batches the worker fills itself, one per partition (more
        when one is full), and the call waits once for all of them. `producer.send` per
        record cost ~10 µs of the worker's CPU each (a future, the partitioner, the
        accumulator): with half the records invalid, a third of the worker (issue #11).
        A record lands on the partition the producer would have chosen (its key's hash,
        a random one without a key), and a record without key and value (a bare
        tombstone) is sent as it is, which `producer.send` refuses.
        """
        if not rejected:
            return
        producer = self._producer
        partitions = sorted(await producer.partitions_for(self.topic))
        by_key: dict[bytes, int] = {}  # one hash per key: invalid records repeat their producers' keys
        batches: dict[int, Any] = {}  # partition -> the aiokafka BatchBuilder being filled
        futures = []
        for record, why in rejected:
            key = record.key
            if key is None:
                partition = self._partitioner(None, partitions, partitions)
            else:
                partition = by_key.get(key, -1)
                if partition < 0:
                    partition = by_key[key] = self._partitioner(key, partitions, partitions)
            headers = [
                ("reason", why.reason.encode()),
                ("detail", why.detail.encode()),
                ("source_topic", record.topic.encode()),
                ("source_partition", str(record.partition).encode()),
                ("source_offset", str(record.offset).encode()),
            ]
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            if batch.append(timestamp=None, key=key, value=record.value, headers=headers) is None:
                # Full (the producer's max_batch_size): send it, and start the next with this
                # record (a batch's first record always fits, however large).
                futures.append(await producer.send_batch(batch, self.topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(timestamp=None, key=key, value=record.value, headers=headers)
        for partition, batch in batches.items():
            futures.append(await producer.send_batch(batch, self.topic, partition=partition))
        await asyncio.gather(*futures)
