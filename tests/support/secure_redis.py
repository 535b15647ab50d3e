"""A Redis with TLS (certificates from a test CA) and ACL users, on free loopback ports.

`SecureRedis` runs one `redis-server` with a plain port and a TLS port; the default user
is the admin, with a password. Client certificates are optional by default
(`--tls-auth-clients optional`), or required (`client_certs=True`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from stream.devtools.servers import free_port
from stream.devtools.servers import redis_server_binary as _binary
from tests.support.pki import Authority, Issued

__all__ = ["ADMIN_PASSWORD", "SecureRedis"]

ADMIN_PASSWORD = "redis-admin-pass-Qe81"


class SecureRedis:
    """redis-server with `port` (plain) and `tls_port` (TLS), admin = the default user with ADMIN_PASSWORD."""

    def __init__(self, authority: Authority, client_certs: bool = False) -> None:
        self.authority = authority
        self.dir = Path(tempfile.mkdtemp(prefix="secure-redis-"))
        self.server: Issued = authority.issue("redis-server", server=True)
        self.port = free_port()
        self.tls_port = free_port()
        self.client_certs = client_certs
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SecureRedis:
        argv = [
            _binary(), "--port", str(self.port), "--tls-port", str(self.tls_port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(self.server.cert), "--tls-key-file", str(self.server.key),
            "--tls-ca-cert-file", str(self.authority.ca),
            "--tls-auth-clients", "yes" if self.client_certs else "optional",
            "--requirepass", ADMIN_PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(self.dir),
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.admin().ping()
                return self
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server with TLS did not start (exit {self.proc.poll()})") from None
                time.sleep(0.02)

    def admin(self) -> redis.Redis:
        """A client of the default (admin) user over the plain port."""
        return redis.Redis(host="127.0.0.1", port=self.port, password=ADMIN_PASSWORD, socket_timeout=5)

    def url(self, tls: bool = True, user: str | None = None, password: str | None = None) -> str:
        """`rediss://[user:password@]127.0.0.1:TLS_PORT/0` (or redis:// on the plain port)."""
        info = f"{user or ''}:{password}@" if password else (f"{user}@" if user else "")
        return f"{'rediss' if tls else 'redis'}://{info}127.0.0.1:{self.tls_port if tls else self.port}/0"

    def add_user(self, name: str, password: str, rules: str) -> None:
        """ACL SETUSER name on >password <rules> (rules as docs/security.md writes them)."""
        self.admin().execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}", *rules.split())

    def freeze(self) -> None:
        """SIGSTOP: the server stops answering without closing its connections."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after `freeze`."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
