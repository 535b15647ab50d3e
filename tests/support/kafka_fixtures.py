"""pytest fixtures for Apache Kafka (tests/support/apache_kafka.py), registered by tests/conftest.py.

- `apache_kafka`: one broker for the session; tests share it, so they use their own topic names
  (the `prefix` fixture) and leave it running (crash it only through `restart()`, which waits).
- `apache_kafka_factory`: private brokers for one test (`apache_kafka_factory(partitions=4, ...)`,
  same arguments as ApacheKafka), stopped after it: for tests that wipe a broker or change its settings.

Without the broker's jars these fixtures skip, saying to run `.ci/fetch-kafka.sh`; in CI
(CI set) they fail instead, so a machine that lost its jars cannot pass by skipping.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pytest

from tests.support.apache_kafka import ApacheKafka, KafkaUnavailable

__all__ = ["apache_kafka", "apache_kafka_factory"]


def _unavailable(exc: KafkaUnavailable) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"Apache Kafka tests cannot run in CI: {exc}", pytrace=False)
    pytest.skip(str(exc))


@pytest.fixture(scope="session")
def apache_kafka() -> Iterator[ApacheKafka]:
    """An Apache Kafka KRaft node for the whole session (`.bootstrap` is "127.0.0.1:PORT")."""
    try:
        broker = ApacheKafka()
    except KafkaUnavailable as exc:
        _unavailable(exc)
    with broker:
        yield broker


@pytest.fixture
def apache_kafka_factory() -> Iterator[Callable[..., ApacheKafka]]:
    """Start private brokers: `apache_kafka_factory(**ApacheKafka arguments)`, stopped after the test."""
    brokers: list[ApacheKafka] = []

    def start(**options: Any) -> ApacheKafka:
        try:
            broker = ApacheKafka(**options)
        except KafkaUnavailable as exc:
            _unavailable(exc)
        brokers.append(broker)
        return broker.start()

    try:
        yield start
    finally:
        for broker in brokers:
            broker.stop()
