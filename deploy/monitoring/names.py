"""Metric names, checked against the registries that serve them.

No metric name in a generated rule or panel is typed free-hand: each is looked up
in the registry of the process that exposes it, and every `crm_*` identifier of
every generated PromQL expression must be known to one of them:

- KPI gauges (the exporter, read from Redis): `stream.kpis.METRICS`;
- worker operational metrics: the registry of `stream.worker.metrics.WorkerMetrics`;
- the exporter's own health metrics (`stream/exporter/collector.py`, `KpiCollector.collect`);
- the lag exporter's, read from the broker (`stream/kafka/lag_exporter.py`).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Literal

from stream.kpis import METRICS
from stream.worker.metrics import WorkerMetrics

__all__ = [
    "EXPORTER_METRICS",
    "KPI_METRICS",
    "LAG_EXPORTER_METRICS",
    "MetricSource",
    "UnknownMetricError",
    "exporter_metric",
    "kpi_metric",
    "lag_exporter_metric",
    "metric_help",
    "metric_source",
    "metrics_in",
    "worker_metric",
    "worker_metric_help",
]

MetricSource = Literal["kpi", "worker", "exporter", "lag_exporter"]

KPI_METRICS = {m.name: m for m in METRICS}

# Served by the exporter itself, beside the KPI gauges.
EXPORTER_METRICS = frozenset(
    {"crm_exporter_redis_up", "crm_exporter_scrape_seconds", "crm_exporter_scrape_errors_total", "crm_kpi_build_info"}
)

# Served by `crm-kpi lag-exporter` (stream/kafka/lag_exporter.py), from the broker's offsets.
LAG_EXPORTER_METRICS = frozenset(
    {"crm_kafka_group_lag", "crm_kafka_group_committed_offset", "crm_kafka_partition_end_offset", "crm_kafka_broker_up"}
)

_CRM_METRIC_NAME = re.compile(r"\bcrm_[a-z0-9_]+\b")


class UnknownMetricError(ValueError):
    """A `crm_*` name no registry serves (a typo, or a metric that was removed)."""


@cache
def worker_metric_help() -> dict[str, str]:
    """Sample names a worker exposes -> their help, read from its own metrics registry."""
    metrics = WorkerMetrics()
    metrics.watch_lag(dict)
    names: dict[str, str] = {}
    for family in metrics.registry.collect():
        if family.type == "counter":
            suffixes: tuple[str, ...] = ("_total",)
        elif family.type == "histogram":
            suffixes = ("_bucket", "_sum", "_count")
        else:
            suffixes = ("",)
        for suffix in suffixes:
            names[family.name + suffix] = family.documentation
    return names


def metric_source(name: str) -> MetricSource:
    """Which process serves a metric; UnknownMetricError if none does."""
    if name in KPI_METRICS:
        return "kpi"
    if name in worker_metric_help():
        return "worker"
    if name in EXPORTER_METRICS:
        return "exporter"
    if name in LAG_EXPORTER_METRICS:
        return "lag_exporter"
    raise UnknownMetricError(
        f"{name} is not a metric of stream.kpis.METRICS, stream.worker.metrics, the exporter or the lag exporter"
    )


def _checked(name: str, source: MetricSource) -> str:
    if metric_source(name) != source:
        raise UnknownMetricError(f"{name} is a {metric_source(name)} metric, not a {source} one")
    return name


def kpi_metric(name: str) -> str:
    """A KPI gauge name, checked to be in `stream.kpis.METRICS`."""
    return _checked(name, "kpi")


def worker_metric(name: str) -> str:
    """A worker operational sample name, checked to be served by `stream.worker.metrics.WorkerMetrics`."""
    return _checked(name, "worker")


def lag_exporter_metric(name: str) -> str:
    """One of the lag exporter's metrics (the broker's view of the workers' group)."""
    return _checked(name, "lag_exporter")


def exporter_metric(name: str) -> str:
    """One of the exporter's own health metrics."""
    return _checked(name, "exporter")


def metrics_in(expr: str) -> frozenset[str]:
    """Every `crm_*` metric a PromQL expression reads; UnknownMetricError if a registry lacks one."""
    names = frozenset(_CRM_METRIC_NAME.findall(expr))
    for name in names:
        metric_source(name)
    return names


def metric_help(expr: str) -> str:
    """The registry's help text of the first KPI or worker metric an expression reads."""
    for name in _CRM_METRIC_NAME.findall(expr):
        if name in KPI_METRICS:
            return KPI_METRICS[name].help
        if name in worker_metric_help():
            return worker_metric_help()[name]
    return ""
