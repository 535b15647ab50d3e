"""The worker's operational metrics (docs/kpi-definitions.md), on its own registry.

Counters are incremented once per batch with pre-summed values: no per-event
label look-ups on the hot path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from stream.build_info import build_info
from stream.events.decode import REASONS
from stream.worker.health import Health

__all__ = ["WorkerMetrics"]

LagSource = Callable[[], Mapping[tuple[str, int], int]]


class _LagCollector(Collector):
    """Kafka consumer lag per partition (high watermark - next offset to apply), read at scrape."""

    def __init__(self, source: LagSource) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "crm_kafka_consumer_lag",
            "Records in the partition not yet applied by this worker.",
            labels=["topic", "partition"],
        )
        for (topic, partition), lag in sorted(self._source().items()):
            family.add_metric([topic, str(partition)], lag)
        yield family


class _PartitionStateCollector(Collector):
    """Per-partition signals of a log or a Redis that went backwards, read at scrape."""

    def __init__(self, owner: WorkerMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[GaugeMetricFamily]:
        owner = self._owner
        mismatch = GaugeMetricFamily(
            "crm_kafka_log_mismatch",
            "1 while a partition is paused because its Kafka log is not the one Redis's applied offset"
            " counts (recreated or truncated topic); reason log_behind or log_replaced.",
            labels=["topic", "partition", "reason"],
        )
        for (topic, partition), reason in sorted(owner.log_mismatch.items()):
            mismatch.add_metric([topic, str(partition), reason], 1)
        yield mismatch
        gap = GaugeMetricFamily(
            "crm_kpi_history_gap_records",
            "Records of a partition the KPIs miss for good (deleted by Kafka retention before they were"
            " applied, or lost with Redis), while the longest window still covers their loss.",
            labels=["topic", "partition"],
        )
        horizon = time.time() - owner.gap_horizon_s
        for (topic, partition), (records, since) in sorted(owner.history_gaps.items()):
            if records > 0 and since > horizon:
                gap.add_metric([topic, str(partition)], records)
        yield gap


class _StateCollector(Collector):
    """Series read from the worker's state at scrape time: per-partition progress, event lag, build info.

    Per partition this worker owns: the offset it last committed to Kafka (what
    Kafka's group lag and kafka_exporter-style tools measure against) and the
    newest `occurred_at` applied from it, as a unix timestamp - so a partition
    that never had an event has no series rather than a misleading 0.
    `crm_event_lag_seconds` likewise appears with the first event.
    """

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        m = self._metrics
        committed = GaugeMetricFamily(
            "crm_kafka_committed_offset",
            "Next offset this worker committed to Kafka for the partition (records before it are applied).",
            labels=["topic", "partition"],
        )
        for (topic, partition), offset in sorted(m.committed.items()):
            committed.add_metric([topic, str(partition)], offset)
        yield committed
        newest = GaugeMetricFamily(
            "crm_kafka_newest_event_timestamp_seconds",
            "Unix time of the newest occurred_at applied from the partition by this worker.",
            labels=["topic", "partition"],
        )
        for (topic, partition), at in sorted(m.newest_by_partition.items()):
            newest.add_metric([topic, str(partition)], at)
        yield newest
        lag = GaugeMetricFamily("crm_event_lag_seconds", "Now - newest occurred_at seen by this worker.")
        if m.newest_event_s is not None:
            lag.add_metric([], time.time() - m.newest_event_s)
        yield lag
        yield build_info()


class WorkerMetrics:
    """Counters, gauges and histogram of one worker process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.processed = Counter(
            "crm_events_processed_total", "Valid, new events applied, by type.", ["type"], registry=r
        )
        self.invalid = Counter("crm_events_invalid_total", "Records dead-lettered, by reason.", ["reason"], registry=r)
        self.duplicate = Counter(
            "crm_events_duplicate_total", "Repeated event_ids (producer retries) counted once.", registry=r
        )
        self.late = Counter(
            "crm_events_late_total", "Events older than the longest window (no window changed).", registry=r
        )
        self.repartitioned = Counter(
            "crm_events_repartitioned_total",
            "Valid events read off their home partition (Redis Cluster) and forwarded there through the"
            " repartition topic, by the topic they were read on.",
            ["topic"],
            registry=r,
        )
        self.redis_errors = Counter("crm_redis_errors_total", "Failed Redis calls (retried with backoff).", registry=r)
        self.conflicts = Counter(
            "crm_batch_conflicts_total",
            "Batches re-read because another writer got there first, by kind.",
            ["kind"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "crm_batch_seconds",
            "Time to process one batch: decode, Redis read and atomic write.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.redis_rewinds = Counter(
            "crm_redis_rewinds",
            "Partitions found behind in Redis (it lost writes: an older snapshot, a promoted replica, an"
            " empty restart); the worker re-applied them from Kafka.",
            ["topic"],
            registry=r,
        )
        self.log_mismatch: dict[tuple[str, int], str] = {}
        self.history_gaps: dict[tuple[str, int], tuple[int, float]] = {}
        self.gap_horizon_s = 30 * 86400.0  # the longest window: a gap older than it no longer shows
        r.register(_PartitionStateCollector(self))
        self.newest_event_s: float | None = None
        self.newest_by_partition: dict[tuple[str, int], float] = {}
        self.committed: dict[tuple[str, int], int] = {}
        r.register(_StateCollector(self))
        for reason in REASONS:  # zero series exist from the start, so rate() works at once
            self.invalid.labels(reason)
        self.health = Health(r)

    def applied(self, newest_us: Mapping[str, int]) -> None:
        """Record the newest occurred_at (µs) applied per partition field 'topic:partition'."""
        for field, t_us in newest_us.items():
            topic, _, partition = field.rpartition(":")
            key = (topic, int(partition))
            at = t_us / 1e6
            if at > self.newest_by_partition.get(key, float("-inf")):
                self.newest_by_partition[key] = at
            if self.newest_event_s is None or at > self.newest_event_s:
                self.newest_event_s = at

    def released(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Forget partitions this worker no longer owns (their series go with them)."""
        for key in partitions:
            self.committed.pop(key, None)
            self.newest_by_partition.pop(key, None)

    def watch_lag(self, source: LagSource) -> None:
        """Export per-partition consumer lag computed by `source` at scrape time."""
        self.registry.register(_LagCollector(source))
