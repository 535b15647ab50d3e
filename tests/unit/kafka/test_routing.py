"""An event's routing key and home partition: Kafka's default partitioner (murmur2), so producers
keyed by customer_id put every event at home and the worker forwards only the others."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from stream.kafka.routing import home_partition, routing_key

# Kafka's own test vectors: org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed Java ints).
JAVA_MURMUR2 = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}

# The Java client's DefaultPartitioner over 1000 partitions (kafka-python's and aiokafka's test vectors).
PARTITION_OF_1000 = {b"": 681, b"a": 524, b"ab": 434, b"abc": 107, b"123456789": 566, b"\x00 ": 742}


@pytest.mark.parametrize(("key", "signed"), sorted(JAVA_MURMUR2.items()))
def test_the_home_partition_is_javas_positive_murmur2_modulo_the_count(key: str, signed: int) -> None:
    positive = signed & 0x7FFFFFFF  # Utils.toPositive
    assert home_partition(key.encode(), 2**31) == positive
    assert home_partition(key.encode(), 12) == positive % 12


@pytest.mark.parametrize(("key", "partition"), sorted(PARTITION_OF_1000.items()))
def test_known_partitions_of_the_default_partitioner(key: bytes, partition: int) -> None:
    assert home_partition(key, 1000) == partition


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=1024))
def test_a_producer_keyed_by_the_routing_key_puts_the_event_at_home(key: bytes, partitions: int) -> None:
    """aiokafka's (and the Java client's) default partitioner chooses the home partition: no hop."""
    home = home_partition(key, partitions)
    assert 0 <= home < partitions
    assert DefaultPartitioner()(key, list(range(partitions)), list(range(partitions))) == home


_ids = st.text(min_size=1, max_size=40)


@given(_ids, _ids)
def test_an_event_with_a_customer_routes_by_its_customer(event_id: str, customer_id: str) -> None:
    assert routing_key(SimpleNamespace(event_id=event_id, customer_id=customer_id)) == customer_id.encode()


@given(_ids)
def test_an_event_without_a_customer_routes_by_its_event_id(event_id: str) -> None:
    """So a customer-less event's redelivery under another key still meets its original's dedupe set."""
    assert routing_key(SimpleNamespace(event_id=event_id)) == event_id.encode()
    assert routing_key(SimpleNamespace(event_id=event_id, customer_id=None)) == event_id.encode()


@given(_ids, _ids, st.integers(min_value=1, max_value=64))
def test_every_event_of_a_customer_has_one_home(a: str, b: str, partitions: int) -> None:
    """A ticket opened and answered (any event ids) meet in one partition group."""
    opened, answered = SimpleNamespace(event_id=a, customer_id="c-1"), SimpleNamespace(event_id=b, customer_id="c-1")
    assert home_partition(routing_key(opened), partitions) == home_partition(routing_key(answered), partitions)
