"""`crm-kpi exporter`: KPI gauges read from Redis at scrape time (docs/kpis.md).

Every scrape runs one Lua read (which sends only the buckets written since the last
scrape: the window sums are kept in a `ReadCache`) and computes each metric through the
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
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from stream.build_info import build_info
from stream.events.windows import make_windows
from stream.kpis import METRICS
from stream.security.http import serve_until_terminated, start_metrics_server
from stream.security.webconfig import load_web_config
from stream.settings import Settings
from stream.store import Keys, ReadCache, Snapshot, read_snapshot
from stream.store.connection import describe_redis_error, sync_client

__all__ = ["KpiCollector", "kpi_samples", "run_exporter", "sync_redis"]

log = logging.getLogger(__name__)


# A scrape must answer within a second even while Redis hangs (frozen, or a dead
# connection): the read normally takes ~20 ms (README "Performance").
SCRAPE_REDIS_TIMEOUT_S = 0.5


def sync_redis(settings: Settings, timeout: float = 5.0) -> redis.Redis:
    """A blocking Redis client for the configured URL, user, password and TLS files."""
    return sync_client(settings, socket_timeout=timeout, connect_timeout=min(timeout, 3.0))


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
        self._failing: str | None = None  # the last failure's line, while Redis fails
        self._logged_at = 0.0
        self._cache = ReadCache()  # window sums kept between scrapes: a scrape reads what changed

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        started = time.perf_counter()
        families = {m.name: GaugeMetricFamily(m.name, m.help, labels=list(m.all_labels)) for m in METRICS}
        up = 1
        try:
            snap = snapshot(self.client, self.settings, cache=self._cache)
        except (redis.RedisError, OSError) as exc:
            failure = describe_redis_error(exc, self.settings)
            self._failed(str(failure), failure.permanent)
            up = 0
        else:
            self._recovered()
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

    def _failed(self, line: str, permanent: bool) -> None:
        # One line when Redis starts failing or the failure changes, then once a minute;
        # ERROR when no retry can fix it (a wrong password, a missing right, TLS).
        now = time.monotonic()
        with self._lock:
            self._errors += 1
            if line == self._failing and now - self._logged_at < 60:
                return
            self._failing, self._logged_at = line, now
        log.log(logging.ERROR if permanent else logging.WARNING, "scrape: %s (crm_exporter_redis_up 0)", line)

    def _recovered(self) -> None:
        with self._lock:
            was, self._failing = self._failing, None
        if was is not None:
            log.warning("scrape: Redis is readable again")


def build_registry(client: redis.Redis, settings: Settings) -> CollectorRegistry:
    """A registry holding only the KPI collector."""
    registry = CollectorRegistry()
    registry.register(KpiCollector(client, settings))
    return registry


def run_exporter(settings: Settings, block: bool = True) -> Any:
    """Serve /metrics on the exporter's host and port; with block=False return the server for tests.

    TLS and basic auth come from CRM_KPI_WEB_CONFIG_FILE; the Redis read of a scrape gives
    up after `SCRAPE_REDIS_TIMEOUT_S`, answering with crm_exporter_redis_up 0.
    """
    from prometheus_client import make_wsgi_app

    config = load_web_config(settings.web_config_file)
    client = sync_redis(settings, timeout=SCRAPE_REDIS_TIMEOUT_S)
    server, thread = start_metrics_server(
        settings.exporter_host, settings.exporter_port, config, make_wsgi_app(build_registry(client, settings))
    )
    auth = ", basic auth" if config.auth_required else ""
    log.info(
        "exporter serving %s://%s:%d/metrics%s", config.scheme, settings.exporter_host, settings.exporter_port, auth
    )
    # One read now, so a Redis that is unreachable or refuses the exporter's user is said
    # at start (one line), not only at the first scrape.
    list(KpiCollector(client, settings).collect())
    if not block:
        return server
    serve_until_terminated(server, thread)
    return None
