"""`crm-kpi exporter`: KPI gauges read from Redis at scrape time (docs/kpis.md).

Stateless: every scrape runs one Lua read and computes each metric through the
registry in `stream.kpis.registry`. prometheus_client calls `collect()` synchronously
from its HTTP server thread, so the Redis client here is the blocking one and
no event loop is ever blocked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from stream.build_info import build_info
from stream.events.windows import make_windows
from stream.kpis import METRICS
from stream.settings import Settings
from stream.store import Keys, ReadCache, Snapshot, read_snapshot

__all__ = ["KpiCollector", "kpi_samples", "run_exporter", "sync_redis"]

log = logging.getLogger(__name__)


def sync_redis(settings: Settings) -> redis.Redis:
    """A blocking Redis client for the configured URL and password."""
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return redis.Redis.from_url(settings.redis_url, password=password, socket_timeout=5, socket_connect_timeout=3)


def snapshot(
    client: redis.Redis, settings: Settings, now: float | None = None, cache: ReadCache | None = None
) -> Snapshot:
    """Read the current figures from Redis (`cache`: keep window sums between reads, see `ReadCache`)."""
    return read_snapshot(
        client,
        Keys(settings.redis_key_prefix),
        make_windows(settings.windows),
        settings.kpi_config(),
        time.time() if now is None else now,
        settings.max_future_skew,
        cache,
    )


def kpi_samples(snap: Snapshot) -> Iterator[tuple[str, dict[str, str], float]]:
    """Every KPI series as (metric name, labels, value), in registry order."""
    for metric in METRICS:
        if metric.windowed:
            for window, totals in snap.windows.items():
                for labels, value in metric.compute(totals):
                    yield metric.name, dict(zip(metric.all_labels, (window, *labels), strict=True)), value
        else:
            for labels, value in metric.compute(snap.current):
                yield metric.name, dict(zip(metric.all_labels, labels, strict=True)), value


class KpiCollector(Collector):
    """A custom collector: one Redis read per scrape, one gauge family per registry metric."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self._errors = 0
        self._lock = threading.Lock()
        self._cache = ReadCache()  # window sums kept between scrapes: a scrape reads what changed

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        started = time.perf_counter()
        families = {m.name: GaugeMetricFamily(m.name, m.help, labels=list(m.all_labels)) for m in METRICS}
        up = 1
        try:
            snap = snapshot(self.client, self.settings, cache=self._cache)
        except redis.RedisError as exc:
            log.warning("scrape: Redis read failed: %s", exc)
            with self._lock:
                self._errors += 1
            up = 0
        else:
            for name, labels, value in kpi_samples(snap):
                families[name].add_metric(list(labels.values()), value)
        yield from families.values()
        yield GaugeMetricFamily("crm_exporter_redis_up", "1 if the last scrape read Redis.", value=up)
        with self._lock:
            errors = self._errors
        yield CounterMetricFamily(
            "crm_exporter_scrape_errors", "Scrapes whose Redis read failed since the exporter started.", value=errors
        )
        yield build_info()
        yield GaugeMetricFamily(
            "crm_exporter_scrape_seconds",
            "Time to read Redis and compute the KPIs.",
            value=time.perf_counter() - started,
        )


def build_registry(client: redis.Redis, settings: Settings) -> CollectorRegistry:
    """A registry holding only the KPI collector."""
    registry = CollectorRegistry()
    registry.register(KpiCollector(client, settings))
    return registry


def run_exporter(settings: Settings, block: bool = True) -> Any:
    """Serve /metrics on the exporter port; with block=False return the server for tests."""
    client = sync_redis(settings)
    server, thread = start_http_server(
        settings.exporter_port, addr=settings.exporter_host, registry=build_registry(client, settings)
    )
    log.info("exporter serving http://%s:%d/metrics", settings.exporter_host, settings.exporter_port)
    if not block:
        return server
    import signal

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM (docker stop, the demo) ends as cleanly as Ctrl-C

    signal.signal(signal.SIGTERM, _terminate)
    try:
        while thread.is_alive():
            thread.join(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return None
