"""Reading the KPIs out: the Prometheus collector of `crm-kpi exporter`, and tables for terminals."""

from stream.exporter.collector import KpiCollector, kpi_samples, run_exporter, snapshot, sync_redis

__all__ = ["KpiCollector", "kpi_samples", "run_exporter", "snapshot", "sync_redis"]
