"""`crm-kpi lag-exporter`: the workers' consumer-group lag as the broker sees it, on /metrics.

The workers' own `crm_kafka_consumer_lag` comes from each worker's cached high
watermark: it freezes while a worker's loop is blocked and vanishes when the
worker dies - exactly when it matters. This exporter asks the broker instead,
at every scrape: the group's committed offsets (ListConsumerGroupOffsets) and
each partition's end offset (ListOffsets), like kafka_exporter does. It needs
no Redis and no worker; point it at the brokers with the same `CRM_KPI_KAFKA_*`
settings (and `CRM_KPI_KAFKA_GROUP_ID`).

Series (per event topic partition):

* `crm_kafka_group_lag{group,topic,partition}`: end offset - committed offset; a
  partition the group never committed counts from its first retained record;
* `crm_kafka_group_committed_offset{group,topic,partition}` (only once committed);
* `crm_kafka_partition_end_offset{topic,partition}`;
* `crm_kafka_broker_up`: 1 if the last scrape could read all of that from the broker.

prometheus_client calls collectors from its HTTP thread; the Kafka clients live
on one asyncio loop in a background thread and each scrape waits for them at
most `timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from stream.build_info import build_info
from stream.kafka.clients import kafka_client_options
from stream.kafka.topics import partitions_of
from stream.security.http import serve_until_terminated, start_metrics_server
from stream.security.webconfig import load_web_config
from stream.settings import Settings

__all__ = ["GroupLag", "LagCollector", "measure_lag", "run_lag_exporter"]

log = logging.getLogger(__name__)

GroupLag = dict[tuple[str, int], tuple[int | None, int, int]]
"""(topic, partition) -> (committed offset or None, first retained offset, end offset)."""


async def measure_lag(settings: Settings, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer) -> GroupLag:
    """Committed, first and end offsets of every partition the workers' group consumes (`consumed_topics`)."""
    known = await partitions_of(admin, settings.consumed_topics())
    partitions = [TopicPartition(topic, p) for topic, ids in known.items() for p in ids]
    if not partitions:
        return {}
    committed = await admin.list_consumer_group_offsets(settings.kafka_group_id, partitions=partitions)
    ends = await consumer.end_offsets(partitions)
    firsts = await consumer.beginning_offsets(partitions)
    out: GroupLag = {}
    for tp in partitions:
        meta = committed.get(tp)
        offset = meta.offset if meta is not None and meta.offset >= 0 else None
        out[(tp.topic, tp.partition)] = (offset, firsts[tp], ends[tp])
    return out


class LagCollector(Collector):
    """Reads the broker at each scrape (through a private asyncio loop) and yields the lag series."""

    def __init__(self, settings: Settings, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kafka-lag", daemon=True)
        self._thread.start()
        self._clients: tuple[AIOKafkaAdminClient, AIOKafkaConsumer] | None = None
        self._lock = threading.Lock()

    async def _measure(self) -> GroupLag:
        if self._clients is None:
            options = kafka_client_options(self.settings)
            admin = AIOKafkaAdminClient(**options, request_timeout_ms=int(self.timeout_s * 1000))
            consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
            await admin.start()
            try:
                await consumer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await consumer.stop()
                await admin.close()
                raise
            self._clients = (admin, consumer)
        admin, consumer = self._clients
        return await measure_lag(self.settings, admin, consumer)

    async def _reset(self) -> None:
        if self._clients is not None:
            admin, consumer = self._clients
            self._clients = None
            for close in (consumer.stop, admin.close):
                with contextlib.suppress(Exception):  # a dead broker: nothing left to close cleanly
                    await close()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        group = self.settings.kafka_group_id
        labels = ["group", "topic", "partition"]
        lag = GaugeMetricFamily(
            "crm_kafka_group_lag", "Records of the partition the group has not committed.", labels=labels
        )
        committed = GaugeMetricFamily(
            "crm_kafka_group_committed_offset", "Next offset the group committed for the partition.", labels=labels
        )
        end = GaugeMetricFamily(
            "crm_kafka_partition_end_offset",
            "Offset the partition's next record will get.",
            labels=["topic", "partition"],
        )
        up = 1
        with self._lock:
            future = asyncio.run_coroutine_threadsafe(self._measure(), self._loop)
            try:
                offsets = future.result(self.timeout_s)
            except Exception as exc:
                future.cancel()
                log.warning(
                    "lag exporter: reading offsets from %s failed: %s", self.settings.kafka_bootstrap_servers, exc
                )
                asyncio.run_coroutine_threadsafe(self._reset(), self._loop).result(self.timeout_s)
                offsets, up = {}, 0
        for (topic, partition), (offset, first, last) in sorted(offsets.items()):
            p = str(partition)
            lag.add_metric([group, topic, p], max(0, last - (offset if offset is not None else first)))
            if offset is not None:
                committed.add_metric([group, topic, p], offset)
            end.add_metric([topic, p], last)
        yield lag
        yield committed
        yield end
        yield GaugeMetricFamily(
            "crm_kafka_broker_up", "1 if the last scrape read the offsets from the broker.", value=up
        )
        yield build_info()


def run_lag_exporter(settings: Settings, block: bool = True) -> Any:
    """Serve /metrics on CRM_KPI_EXPORTER_HOST:CRM_KPI_LAG_EXPORTER_PORT; with block=False return the server (tests).

    TLS and basic auth come from CRM_KPI_WEB_CONFIG_FILE, as for the exporter (docs/security.md).
    """
    config = load_web_config(settings.web_config_file)
    registry = CollectorRegistry()
    registry.register(LagCollector(settings))
    server, thread = start_metrics_server(
        settings.exporter_host, settings.lag_exporter_port, config, make_wsgi_app(registry)
    )
    auth = ", basic auth" if config.auth_required else ""
    log.info(
        "lag exporter serving %s://%s:%d/metrics%s",
        config.scheme, settings.exporter_host, settings.lag_exporter_port, auth,
    )
    if not block:
        return server
    serve_until_terminated(server, thread)
    return None
