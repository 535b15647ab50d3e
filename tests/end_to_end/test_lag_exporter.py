"""`crm-kpi lag-exporter` against Apache Kafka: the group's lag as the broker counts it, and its alert.

No worker runs here on purpose: the lag a dead worker cannot report is what this
exporter is for. A real Prometheus scrapes it with the shipped rules loaded and
the consumer-group lag alert goes pending once the group is over the threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from deploy import monitoring
from stream.kafka.topics import create_topics
from tests.integration.monitoring.test_prometheus import Prometheus
from tests.support.apache_kafka import ApacheKafka
from tests.support.harness import WorkerProcess, required_tool, scrape, settings_of, stack_env, wait_for

pytestmark = pytest.mark.slow


async def _fill(bootstrap: str, topic: str, counts: dict[int, int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, b'{"not": "read here"}', key=b"k", partition=p)
            for p, n in counts.items()
            for _ in range(n)
        ]
        for fut in futures:
            await fut
    finally:
        await producer.stop()


async def _commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
    finally:
        await consumer.stop()


def _series(samples: dict[Any, float], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


async def _lag_exporter(env: dict[str, str], tmp_path: Path) -> tuple[WorkerProcess, str]:
    proc = WorkerProcess(env, "lag-exporter", tmp_path / "lag-exporter.log").start()
    url = f"http://127.0.0.1:{env['CRM_KPI_LAG_EXPORTER_PORT']}/metrics"

    async def reads_the_broker() -> bool:  # a fresh broker's group coordinator takes a moment
        try:
            return scrape(url)[("crm_kafka_broker_up", ())] == 1
        except OSError:
            return False

    await wait_for(reads_the_broker, 60, "the lag exporter to serve and read the broker")
    return proc, url


async def test_group_lag_from_the_broker_and_its_alert(apache_kafka: ApacheKafka, prefix: str, tmp_path: Path) -> None:
    from stream.devtools.servers import free_port

    env = stack_env(apache_kafka.bootstrap, "redis://127.0.0.1:1/0", prefix, topic_partitions="2")
    env["CRM_KPI_LAG_EXPORTER_PORT"] = str(free_port())
    settings = settings_of(env)
    await create_topics(settings)
    tickets = settings.topic("tickets")
    group = settings.kafka_group_id
    await _fill(apache_kafka.bootstrap, tickets, {0: 10_500, 1: 200})
    await _commit(apache_kafka.bootstrap, group, {TopicPartition(tickets, 0): 300})

    exporter, url = await _lag_exporter(env, tmp_path)
    binary = required_tool("prometheus", "prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in sorted(monitoring.RULES_DIR.glob("*.yml"))],
        "scrape_configs": [
            {
                "job_name": monitoring.LAG_EXPORTER_JOB,
                "static_configs": [{"targets": [f"127.0.0.1:{env['CRM_KPI_LAG_EXPORTER_PORT']}"]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    prometheus = Prometheus(binary, tmp_path / "prometheus.yml", tmp_path / "tsdb", tmp_path / "prometheus.log")
    try:
        samples = scrape(url)
        lag = _series(samples, "crm_kafka_group_lag")
        key = lambda p: (("group", group), ("partition", str(p)), ("topic", tickets))  # noqa: E731
        assert key(0) in lag, samples
        assert lag[key(0)] == 10_500 - 300 and lag[key(1)] == 200  # never committed: from its first record
        assert _series(samples, "crm_kafka_group_committed_offset") == {key(0): 300}
        ends = _series(samples, "crm_kafka_partition_end_offset")
        assert ends[(("partition", "0"), ("topic", tickets))] == 10_500
        assert samples[("crm_kafka_broker_up", ())] == 1
        # Every event topic's partitions are reported (the empty ones at 0).
        assert len(lag) == 2 * len(settings.event_topics())

        await wait_for(prometheus.ready, 60, "prometheus to be ready")

        async def pending() -> bool:
            status, body = await prometheus.get("/api/v1/alerts")
            assert status == 200, body
            return any(
                a["labels"]["alertname"] == "CrmKpiConsumerGroupLagHigh"
                and a["labels"].get("topic") == tickets
                and a["state"] in {"pending", "firing"}
                for a in body["data"]["alerts"]
            )

        await wait_for(pending, 60, "CrmKpiConsumerGroupLagHigh to go pending on the broker's lag")
        # The pipeline board's panel on it shows the same figure.
        (panel,) = [q for q in monitoring.panel_queries() if "from the brokers" in q.panel]
        shown = {r["metric"]["topic"]: float(r["value"][1]) for r in await prometheus.query(panel.expr)}
        assert shown[tickets] == 10_500 - 300 + 200
        # The workers catch up (here: the group commits the end): the lag and the alert go away.
        await _commit(
            apache_kafka.bootstrap, group, {TopicPartition(tickets, 0): 10_500, TopicPartition(tickets, 1): 200}
        )
        assert set(_series(scrape(url), "crm_kafka_group_lag").values()) == {0}

        async def resolved() -> bool:
            return not await pending()

        await wait_for(resolved, 60, "the alert to resolve")
    finally:
        prometheus.stop()
        exporter.stop()


async def test_a_broker_that_goes_away_is_reported_not_hidden(
    apache_kafka_factory: Callable[..., ApacheKafka], prefix: str, tmp_path: Path
) -> None:
    from stream.devtools.servers import free_port

    broker = apache_kafka_factory()
    env = stack_env(broker.bootstrap, "redis://127.0.0.1:1/0", prefix, topic_partitions="1")
    env["CRM_KPI_LAG_EXPORTER_PORT"] = str(free_port())
    await create_topics(settings_of(env))
    exporter, url = await _lag_exporter(env, tmp_path)
    try:
        broker.kill()
        samples = scrape(url)
        assert samples[("crm_kafka_broker_up", ())] == 0
        assert not _series(samples, "crm_kafka_group_lag")  # unknown, not a stale number
        log = (tmp_path / "lag-exporter.log").read_text()
        assert "Traceback" not in log and broker.bootstrap in log
    finally:
        exporter.stop()
