"""Where an event belongs: its routing key and its home partition (Redis Cluster mode).

State is co-partitioned with Kafka (docs/design.md "Scaling out"): partition p of every
event topic is partition group p, and a customer's entities live in one group. The home
partition of an event is the one Kafka's default partitioner (the Java client's and
aiokafka's murmur2) gives its routing key, so producers that key events by customer_id
put every event at home; an event found elsewhere is forwarded there through the
repartition topic (`stream.worker.repartition`). Pure functions, no I/O.
"""

from __future__ import annotations

from typing import Any

from aiokafka.partitioner import murmur2

__all__ = ["home_partition", "routing_key"]


def routing_key(event: Any) -> bytes:
    """The UTF-8 routing key of a valid event: its customer_id when it has one, else its event_id.

    An event without a customer touches no entity state; keying it by its event_id still
    sends every copy of it (a redelivery under another key) to one group's dedupe set.
    """
    customer = getattr(event, "customer_id", None)
    return str(customer if customer is not None else event.event_id).encode()


def home_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner: murmur2 of the key, made positive, modulo the partition count."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions
