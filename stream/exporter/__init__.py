"""`crm-kpi exporter`: a Prometheus collector reading the KPIs from Redis at scrape time."""

from stream.exporter.collector import KpiCollector, kpi_samples, run_exporter, snapshot, sync_redis

__all__ = ["KpiCollector", "kpi_samples", "run_exporter", "snapshot", "sync_redis"]
