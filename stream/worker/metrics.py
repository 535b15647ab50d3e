"""The worker's operational metrics (docs/kpi-definitions.md), on its own registry.

Counters are incremented once per batch with pre-summed values: no per-event
label look-ups on the hot path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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
        lag = Gauge("crm_event_lag_seconds", "Now - newest occurred_at seen by this worker.", registry=r)
        lag.set_function(lambda: time.time() - self.newest_event_s if self.newest_event_s else 0.0)
        for reason in REASONS:  # zero series exist from the start, so rate() works at once
            self.invalid.labels(reason)
        self.health = Health(r)

    def watch_lag(self, source: LagSource) -> None:
        """Export per-partition consumer lag computed by `source` at scrape time."""
        self.registry.register(_LagCollector(source))
