"""`crm-kpi worker`: a Faust worker whose hot path is the batch consumer service.

Faust's own Kafka consumer and producer are switched off (its per-message
stream machinery costs ~250 µs/record); Faust keeps the worker lifecycle,
signal handling and clean shutdown. Its web pages (`/`, `/router/`, `/table/`) are
replaced by a server of our own that serves only `/metrics`, `/-/healthy` (Kafka and
Redis usable) and `/health` (not stuck behind), on
CRM_KPI_WORKER_HOST:CRM_KPI_WORKER_PORT, with the TLS and basic auth of
CRM_KPI_WEB_CONFIG_FILE (docs/security.md) on `/metrics`.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

import faust
from faust.app.base import BootStrategy
from mode import Service
from prometheus_client import generate_latest

from stream.security.http import aiohttp_metrics_app
from stream.security.webconfig import WebConfig, load_web_config
from stream.settings import Settings
from stream.worker.consumer import BatchConsumer
from stream.worker.health import Health, RepeatFilter
from stream.worker.metrics import WorkerMetrics

__all__ = ["create_app", "run_worker"]

log = logging.getLogger(__name__)


class _Boot(BootStrategy):
    # No Faust agents or tables: its consumer would subscribe to nothing and
    # its conductor would spend ~30 s in group joins for no work.
    enable_kafka_consumer = False
    enable_kafka_producer = False


class _App(faust.App):
    BootStrategy = _Boot


Progress = Callable[[], tuple[bool, dict[str, Any]]]
"""(ok, detail) of the worker's progress: `BatchConsumer.health`."""


class MetricsWeb(Service):
    """The worker's HTTP(S) server: /metrics, /-/healthy and /health only (started before the consumer).

    `/-/healthy` answers 503 while Kafka or Redis cannot be used (plain text, no detail);
    `/health` answers 503 while records wait and no batch was applied for
    CRM_KPI_WORKER_STALL_TIMEOUT (JSON: status, lag, seconds_since_progress). Neither asks
    for basic auth: container probes read them.
    """

    def __init__(
        self, settings: Settings, config: WebConfig, metrics: WorkerMetrics, progress: Progress, **kwargs: Any
    ) -> None:
        self.settings = settings
        self.config = config
        self.metrics = metrics
        self.progress = progress
        self._runner: Any = None
        super().__init__(**kwargs)

    @property
    def url(self) -> str:
        return f"{self.config.scheme}://{self.settings.worker_host}:{self.settings.worker_port}/metrics"

    async def on_start(self) -> None:
        from aiohttp import web

        health = self.metrics.health
        app = aiohttp_metrics_app(self.config, lambda: generate_latest(self.metrics.registry), lambda: health.healthy)

        async def progress(request: web.Request) -> web.StreamResponse:
            ok, detail = self.progress()
            return web.json_response(detail, status=200 if ok else 503)

        app.router.add_get("/health", progress)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.settings.worker_host, self.settings.worker_port, ssl_context=self.config.tls
        )
        await site.start()
        auth = ", basic auth" if self.config.auth_required else ""
        log.info("worker metrics on %s%s", self.url, auth)

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def create_app(settings: Settings) -> tuple[Any, BatchConsumer]:
    """The Faust app with the batch consumer attached and /metrics, /-/healthy, /health on the worker port."""
    app = _App(
        "crm-kpi-worker",
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        web_enabled=True,
        store="memory://",
        autodiscover=False,
    )
    metrics = WorkerMetrics()
    service = BatchConsumer(settings, metrics, loop=None)
    app.web_server(MetricsWeb(settings, load_web_config(settings.web_config_file), metrics, service.health))
    app.service(service)  # type: ignore[arg-type]  # faust accepts instances too
    return app, service


_CONNECTION_WORDS = ("connect", "Connection", "metadata", "Failed fetch", "NodeNotReady", "oordinator")


class _KafkaLogs(RepeatFilter):
    """aiokafka's own lines while the worker runs.

    Its connection failures (dozens a second while a broker is away) become one health
    state, logged on change (stream/worker/health.py); its other warnings pass at most
    once a minute per message.
    """

    def __init__(self, health: Health) -> None:
        super().__init__()
        self.health = health

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and self.health.started:
            text = record.getMessage()
            if any(word in text for word in _CONNECTION_WORDS):
                self.health.failed("kafka", "unreachable", f"Kafka unreachable: {text}", False, 5.0)
                return False
        return super().filter(record)


def _check_bind(host: str, port: int) -> None:
    """Exit with one line if the metrics port cannot be bound (taken, or an address not of this host)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            print(
                f"crm-kpi: cannot listen on CRM_KPI_WORKER_HOST:CRM_KPI_WORKER_PORT={host}:{port}: "
                f"{exc.strerror or exc}",
                file=sys.stderr,
            )
            sys.exit(1)


def run_worker(settings: Settings) -> None:
    """Run the worker in the foreground until SIGINT/SIGTERM."""
    from faust.worker import Worker

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    _check_bind(settings.worker_host, settings.worker_port)
    app, service = create_app(settings)
    if settings.log_level != "debug":
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # A logger's filters see only its own records, not its children's: every aiokafka
    # logger gets the filter (they all exist once the client modules are imported).
    kafka_logs = _KafkaLogs(service.metrics.health)
    for name in ["aiokafka", *logging.root.manager.loggerDict]:
        if name == "aiokafka" or name.startswith("aiokafka."):
            logging.getLogger(name).addFilter(kafka_logs)
    worker = Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
