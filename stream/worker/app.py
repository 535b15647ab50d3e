"""`crm-kpi worker`: a Faust worker whose hot path is the batch consumer service.

Faust's own Kafka consumer and producer are switched off (its per-message
stream machinery costs ~250 µs/record); Faust keeps the worker lifecycle,
signal handling, the web server that serves /metrics and /health, and clean shutdown.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from faust.app.base import BootStrategy
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream.settings import Settings
from stream.worker.consumer import BatchConsumer
from stream.worker.metrics import WorkerMetrics

__all__ = ["create_app", "run_worker"]


class _Boot(BootStrategy):
    # No Faust agents or tables: its consumer would subscribe to nothing and
    # its conductor would spend ~30 s in group joins for no work.
    enable_kafka_consumer = False
    enable_kafka_producer = False


class _App(faust.App):
    BootStrategy = _Boot


def create_app(settings: Settings) -> tuple[Any, BatchConsumer]:
    """The Faust app with the batch consumer attached and /metrics on the worker port."""
    app = _App(
        "crm-kpi-worker",
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        web_enabled=True,
        web_port=settings.worker_port,
        web_bind=settings.worker_host,
        store="memory://",
        autodiscover=False,
    )
    metrics = WorkerMetrics()
    service = BatchConsumer(settings, metrics, loop=None)
    app.service(service)  # type: ignore[arg-type]  # faust accepts instances too

    @app.page("/metrics")
    async def _metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/health")
    async def _health(web: Any, request: Any) -> Any:
        ok, detail = service.health()
        return web.json(detail, status=200 if ok else 503)

    return app, service


def run_worker(settings: Settings) -> None:
    """Run the worker in the foreground until SIGINT/SIGTERM."""
    from faust.worker import Worker

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    app, _ = create_app(settings)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    worker = Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
