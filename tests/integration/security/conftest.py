"""Session servers of the security tests: one CA, one Apache Kafka with every security listener
(tests/support/secure_kafka.py), one Redis with TLS and ACL users (tests/support/secure_redis.py),
and a web configuration for the /metrics endpoints (TLS + basic auth)."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest

from tests.support.apache_kafka import KafkaUnavailable
from tests.support.harness import required_tool
from tests.support.pki import Authority, Issued
from tests.support.secure_kafka import SecureKafka
from tests.support.secure_redis import SecureRedis

METRICS_USER = "prometheus"
METRICS_PASSWORD = "metrics-pass-Wb72c"


@dataclass(frozen=True)
class WebFiles:
    """A web configuration file for the /metrics endpoints and what a client needs to scrape them."""

    path: Path
    ca: Path
    user: str
    password: str
    cert: Issued

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def secure_kafka(pki: Authority) -> Iterator[SecureKafka]:
    try:
        kafka = SecureKafka(pki)
    except KafkaUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Apache Kafka tests cannot run in CI: {exc}", pytrace=False)
        pytest.skip(str(exc))
    try:
        kafka.start()
        print(f"secure broker start: {kafka.broker.startup_seconds:.1f}s")
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def secure_redis(pki: Authority) -> Iterator[SecureRedis]:
    required_tool("redis-server", "redis-server")
    server = SecureRedis(pki).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def web_files(pki: Authority, tmp_path_factory: pytest.TempPathFactory) -> WebFiles:
    """TLS with the test CA's certificate for 127.0.0.1, and one basic-auth user (bcrypt, low cost for speed)."""
    directory = tmp_path_factory.mktemp("web")
    cert = pki.issue("metrics-endpoint", server=True)
    hashed = bcrypt.hashpw(METRICS_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    path = directory / "web-config.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {cert.cert}\n  key_file: {cert.key}\n"
        f"basic_auth_users:\n  {METRICS_USER}: {hashed}\n"
    )
    return WebFiles(path, pki.ca, METRICS_USER, METRICS_PASSWORD, cert)


def fetch(url: str, web: WebFiles | None = None, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    """GET `url` (over TLS verified with the web files' CA when https); (status, body). Raises OSError."""
    import base64
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    context = web.client_context() if web is not None and url.startswith("https:") else None
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def scrape_secure(url: str, web: WebFiles) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrape a /metrics page over TLS with basic auth: {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = fetch(url, web, (web.user, web.password))
    assert status == 200, (status, text)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
