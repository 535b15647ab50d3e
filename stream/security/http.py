"""The two /metrics servers: the worker's (aiohttp, on Faust's event loop) and the exporter's (threads).

Both serve `/metrics` (behind basic auth when the web configuration has users) and
`/-/healthy` (no authentication, no detail: 200 "OK" or 503 "unhealthy", for container
health checks); the worker adds `/health` (stream/worker/app.py). Anything else is 404. TLS and users come from
CRM_KPI_WEB_CONFIG_FILE (`stream.security.webconfig`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST

from stream.security.webconfig import REALM, WebConfig

__all__ = ["MetricsHttpServer", "aiohttp_metrics_app", "serve_until_terminated", "start_metrics_server"]

log = logging.getLogger(__name__)
_UNAUTHORIZED_HEADERS = [
    ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),
    ("Content-Type", "text/plain"),
]
_HANDSHAKE_TIMEOUT_S = 10.0


# --- the worker's: aiohttp --------------------------------------------------------------


def aiohttp_metrics_app(config: WebConfig, render: Callable[[], bytes], healthy: Callable[[], bool]) -> Any:
    """An aiohttp application serving /metrics (rendered by `render`) and /-/healthy."""
    from aiohttp import web

    async def metrics(request: web.Request) -> web.StreamResponse:
        if config.auth_required:
            header = request.headers.get("Authorization")
            # bcrypt is slow on purpose: check off the event loop.
            ok = await asyncio.get_running_loop().run_in_executor(None, config.authorized, header)
            if not ok:
                return web.Response(status=401, text="Unauthorized\n", headers=dict(_UNAUTHORIZED_HEADERS))
        return web.Response(body=render(), content_type=CONTENT_TYPE_LATEST.split(";")[0], charset="utf-8")

    async def health(request: web.Request) -> web.StreamResponse:
        ok = healthy()
        return web.Response(status=200 if ok else 503, text="OK\n" if ok else "unhealthy\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", health)
    return app


# --- the exporter's: a threaded WSGI server -----------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsHttpServer(ThreadingMixIn, WSGIServer):
    """A threaded HTTP(S) server; the TLS handshake runs in the request's thread, with a timeout.

    (Wrapping the listening socket would run handshakes in the accept loop, where one
    silent client would stall every scrape.)
    """

    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:
            request.settimeout(_HANDSHAKE_TIMEOUT_S)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS handshake with %s failed: %s", client_address, exc)
                return
            request.settimeout(None)
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("request from %s failed", client_address, exc_info=True)


def _wsgi_app(
    config: WebConfig, metrics_app: Callable[..., Iterable[bytes]], healthy: Callable[[], bool]
) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/-/healthy":
            ok = healthy()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"OK\n" if ok else b"unhealthy\n"]
        if path != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not Found: the metrics are at /metrics\n"]
        if not config.authorized(environ.get("HTTP_AUTHORIZATION")):
            start_response("401 Unauthorized", _UNAUTHORIZED_HEADERS)
            return [b"Unauthorized\n"]
        return metrics_app(environ, start_response)

    return app


def start_metrics_server(
    host: str, port: int, config: WebConfig, metrics_app: Callable[..., Iterable[bytes]],
    healthy: Callable[[], bool] = lambda: True,
) -> tuple[MetricsHttpServer, threading.Thread]:
    """Serve `metrics_app` (a WSGI app) on host:port in a daemon thread; returns (server, thread)."""
    server_class = type("Server", (MetricsHttpServer,), {
        "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET, "tls": config.tls,
    })
    httpd: MetricsHttpServer = make_server(
        host, port, _wsgi_app(config, metrics_app, healthy), server_class, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return httpd, thread


def serve_until_terminated(server: MetricsHttpServer, thread: threading.Thread) -> None:
    """Block while `start_metrics_server`'s thread serves; SIGTERM or Ctrl-C shut the server down."""
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
