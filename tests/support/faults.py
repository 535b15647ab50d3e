"""Helpers of the fault suite (tests/end_to_end/test_faults.py): metrics, logs, the CLI, a TCP proxy, pacing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.harness import ROOT, Scraped, scrape


def worker_metrics(env: Mapping[str, str]) -> Scraped:
    """The worker's /metrics (CRM_KPI_WORKER_PORT of `env`)."""
    return scrape(f"http://127.0.0.1:{env['CRM_KPI_WORKER_PORT']}/metrics")


def metric_sum(scraped: Scraped, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(
        v for (n, lab), v in scraped.items() if n == name and all((k, w) in lab for k, w in labels.items())
    )


def log_lines(path: Path, pattern: str, level: str = "ERROR") -> list[str]:
    """Lines of a worker log at `level` matching the regex `pattern`."""
    if not path.is_file():
        return []
    rx = re.compile(pattern)
    return [line for line in path.read_text(errors="replace").splitlines() if f"[{level}]" in line and rx.search(line)]


def crm_kpi(env: Mapping[str, str], *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `crm-kpi ARGV` with `env`; returns the completed process (output as text)."""
    return subprocess.run(
        [sys.executable, "-m", "stream", *argv],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 the test controls: `cut()` drops the network, `restore()` brings it back.

    `cut()` closes every relayed connection and refuses new ones (the port stays bound, so
    the same address works again after `restore()`): what a client sees when the network
    to its broker goes away. It runs in a thread, so a test's event loop can block on it.
    """

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", port))
        self._server.listen(64)
        self.port: int = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._closed = False
        self.connections = 0
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Drop every connection now and refuse new ones until `restore()`."""
        with self._lock:
            self._cut = True
            for sock in self._open:
                _close(sock)
            self._open.clear()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        _close(self._server)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                if self._cut:
                    _close(client)
                    continue
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    _close(client)
                    continue
                upstream.settimeout(None)
                self._open |= {client, upstream}
                self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


async def produce_paced(
    bootstrap: str, items: list[tuple[str, bytes | None, bytes | None]], rate: float, chunk: int = 1000
) -> None:
    """Publish `items` in order at about `rate` records/s, each acknowledged (acks=all).

    A send that fails (the broker down, the network cut) is sent again until acknowledged:
    the log may then hold a record twice, which the worker's event-id dedupe counts once.
    Read the end offsets from the broker afterwards (`end_offsets`).
    """
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=1 << 20, request_timeout_ms=10_000
    )
    await producer.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        for first in range(0, len(items), chunk):
            pending = items[first : first + chunk]
            while pending:
                futures = []
                for topic, key, value in pending:
                    try:
                        futures.append(await producer.send(topic, value=value, key=key))
                    except Exception as exc:  # e.g. no metadata while the broker is away
                        futures.append(_failed(exc))
                results = await asyncio.gather(*futures, return_exceptions=True)
                pending = [m for m, r in zip(pending, results, strict=True) if isinstance(r, BaseException)]
                if pending:
                    await asyncio.sleep(0.5)
            ahead = (first + chunk) / rate - (loop.time() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        await producer.stop()


def _failed(exc: BaseException) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_exception(exc)
    return fut
