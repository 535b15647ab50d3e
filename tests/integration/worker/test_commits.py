"""The worker's Kafka offset commit gives up in bounded time and keeps what it could not commit.

aiokafka retries a commit for as long as the group coordinator does not answer (a broker
frozen or restarting, its offsets topic loading). The commit only feeds the lag figures, so
the worker must never wait on it: in a CI run of the broker kill -9 test, a commit waited
for minutes while it held the pipeline's lock, and no batch was applied meanwhile. Real
Apache Kafka of the test's own, frozen with SIGSTOP (connections open, no answer).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.worker import consumer as consumer_module
from stream.worker.consumer import BatchConsumer
from stream.worker.metrics import WorkerMetrics
from tests.support.apache_kafka import ApacheKafka
from tests.support.config import clean_settings

pytestmark = pytest.mark.slow


async def test_a_commit_the_broker_does_not_answer_gives_up_and_is_kept_for_the_next(
    apache_kafka_factory: Callable[..., ApacheKafka], prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = apache_kafka_factory()
    topic = f"{prefix}.leads"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    tp = TopicPartition(topic, 0)
    client = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=f"{prefix}-workers", enable_auto_commit=False)
    await client.start()
    worker = BatchConsumer(clean_settings(kafka_bootstrap_servers=kafka.bootstrap), WorkerMetrics())
    try:
        client.assign([tp])
        worker._consumer = client
        worker._to_commit = {tp: 0}
        await worker._commit()  # the coordinator found and answering
        assert worker.metrics.committed[(topic, 0)] == 0
        assert await client.committed(tp) == 0

        assert kafka.pid is not None
        os.kill(kafka.pid, signal.SIGSTOP)
        try:
            worker._to_commit = {tp: 7}
            began = time.monotonic()
            with caplog.at_level(logging.WARNING, logger=consumer_module.__name__):
                await asyncio.wait_for(worker._commit(), consumer_module._COMMIT_TIMEOUT_S + 5)
                await asyncio.wait_for(worker._commit(), consumer_module._COMMIT_TIMEOUT_S + 5)
            waited = time.monotonic() - began
        finally:
            os.kill(kafka.pid, signal.SIGCONT)
        assert waited < 2 * consumer_module._COMMIT_TIMEOUT_S + 2
        assert worker._to_commit == {tp: 7}, "an offset not committed waits for the next commit"
        failures = [r for r in caplog.records if "offset commit failed" in r.getMessage()]
        assert len(failures) == 1, "said once, not at every commit while it keeps failing"

        await worker._commit()  # the broker answers again
        assert worker._to_commit == {}
        assert await client.committed(tp) == 7
        assert worker.metrics.committed[(topic, 0)] == 7
    finally:
        await client.stop()
