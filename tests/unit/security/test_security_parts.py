"""The security building blocks without servers: URL masking and log redaction, the web configuration's
basic auth, the health state's one line per change, and the exporter's HTTPS server."""

from __future__ import annotations

import base64
import logging
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
from prometheus_client import CollectorRegistry

from stream.devtools.servers import free_port
from stream.security.http import start_metrics_server
from stream.security.redact import Redactor, install_redaction, mask_url, redactor
from stream.security.webconfig import WebConfig, WebConfigError, load_web_config
from stream.worker.health import REPEAT_S, Health, RepeatFilter
from tests.support.pki import Authority


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("redis://user:s3cretpw@h:6379/0", "redis://user:***@h:6379/0"),
        ("rediss://:s3cretpw@h", "rediss://:***@h"),
        ("redis:/:s3cretpw@127.0.0.1:16380/0", "redis:/:***@127.0.0.1:16380/0"),  # malformed, still masked
        ("x redis://u:p@ss@h/0 y", "x redis://u:***@h/0 y"),  # a password holding '@'
        ("https://token@idp.example/x", "https://***@idp.example/x"),
        ("unix:///run/redis.sock and mail@example.com", "unix:///run/redis.sock and mail@example.com"),
    ],
)
def test_url_userinfo_is_masked(text: str, masked: str) -> None:
    assert mask_url(text) == masked


def test_every_log_record_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    install_redaction(["Ab3-secret-value"])
    log = logging.getLogger("test.redaction")
    with caplog.at_level(logging.DEBUG, logger="test.redaction"):
        log.debug("payload %r", b"\x00user\x00user\x00Ab3-secret-value")
        log.warning("url %s", "redis://u:pw-in-url@h/0")
        try:
            raise ValueError("password Ab3-secret-value rejected")
        except ValueError:
            log.exception("failed")
    text = caplog.text
    assert "Ab3-secret-value" not in text and "pw-in-url" not in text
    assert "payload b'\\x00user\\x00user\\x00***'" in text and "redis://u:***@h/0" in text
    assert "password *** rejected" in text
    assert "Ab3-secret-value" in redactor.known()


def test_short_values_are_not_treated_as_secrets() -> None:
    r = Redactor()
    r.add("pw", None, "")
    assert r("pw is fine") == "pw is fine"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_checks_bcrypt_once_per_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed = bcrypt.hashpw(b"right-pass", bcrypt.gensalt(rounds=4))
    config = WebConfig(users={"prom": hashed})
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda p, h: calls.append(p) or real(p, h))
    assert config.authorized(_basic("prom", "right-pass"))
    assert config.authorized(_basic("prom", "right-pass"))
    assert len(calls) == 1  # the second check hit the memo
    for header in (None, "", _basic("prom", "wrong"), _basic("other", "right-pass"), "Basic !!!", "Bearer x",
                   "Basic " + base64.b64encode(b"no-colon").decode()):
        assert not config.authorized(header), header
    assert WebConfig().authorized(None)  # no users: no authentication


def test_web_config_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    cert = Authority(tmp_path / "pki").issue("localhost-metrics", server=True)
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "web.yml").write_text(
        f"tls_server_config:\n  cert_file: ../pki/{cert.cert.name}\n  key_file: ../pki/{cert.key.name}\n"
        "  min_version: TLS13\n"
    )
    config = load_web_config(str(tmp_path / "web" / "web.yml"))
    assert config.tls is not None and config.tls.minimum_version == ssl.TLSVersion.TLSv1_3
    assert not config.auth_required and config.scheme == "https"
    with pytest.raises(WebConfigError, match=r"min_version 'TLS11' is not supported"):
        (tmp_path / "web" / "old.yml").write_text(
            f"tls_server_config:\n  cert_file: {cert.cert}\n  key_file: {cert.key}\n  min_version: TLS11\n"
        )
        load_web_config(str(tmp_path / "web" / "old.yml"))


def test_exporter_server_serves_only_metrics_over_tls_with_auth(tmp_path: Path) -> None:
    ca = Authority(tmp_path)
    cert = ca.issue("metrics", server=True)
    hashed = bcrypt.hashpw(b"scrape-pass", bcrypt.gensalt(rounds=4)).decode()
    path = tmp_path / "web.yml"
    path.write_text(f"tls_server_config:\n  cert_file: {cert.cert}\n  key_file: {cert.key}\n"
                    f"basic_auth_users:\n  prom: {hashed}\n")
    from prometheus_client import make_wsgi_app

    port = free_port()
    server, _ = start_metrics_server("127.0.0.1", port, load_web_config(str(path)), make_wsgi_app(CollectorRegistry()))
    context = ssl.create_default_context(cafile=str(ca.ca))

    def get(page: str, auth: str | None = None, scheme: str = "https") -> int:
        request = urllib.request.Request(f"{scheme}://127.0.0.1:{port}{page}")
        if auth:
            request.add_header("Authorization", auth)
        try:
            with urllib.request.urlopen(request, timeout=5, context=context if scheme == "https" else None) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    try:
        assert get("/metrics", _basic("prom", "scrape-pass")) == 200
        assert get("/metrics") == 401
        assert get("/metrics", _basic("prom", "nope")) == 401
        assert get("/-/healthy") == 200
        assert get("/", _basic("prom", "scrape-pass")) == 404
        with pytest.raises(OSError):
            get("/metrics", scheme="http")
        assert get("/metrics", _basic("prom", "scrape-pass")) == 200  # a failed handshake left it serving
    finally:
        server.shutdown()


def test_health_logs_once_per_state(caplog: pytest.LogCaptureFixture) -> None:
    health = Health(CollectorRegistry())
    health.started = True
    with caplog.at_level(logging.WARNING, logger="stream.worker"):
        for i in range(50):  # an outage whose attempts fail with changing messages
            health.failed("kafka", "unreachable", f"Kafka unreachable: attempt {i % 3}", False, 1.0)
        assert not health.healthy and not health.misconfigured
        health.failed("redis", "auth", "Redis refused user 'w'", True, 30.0)
        assert health.misconfigured
        health.recovered("kafka")
        health.recovered("kafka")
        health.recovered("redis")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    assert lines[0].startswith("Kafka unreachable: attempt 0; retrying with backoff")
    assert caplog.records[1].levelno == logging.ERROR and "until it is fixed" in lines[1]
    assert lines[2].startswith("Kafka is usable again after") and lines[3].startswith("Redis is usable again")
    assert health.healthy


def test_repeat_filter_lets_one_line_a_minute_through() -> None:
    f = RepeatFilter(interval=REPEAT_S)
    records = [logging.LogRecord("aiokafka.x", logging.ERROR, "f", 1, "Unable connect to %s", (i,), None)
               for i in range(100)]
    passed = [r for r in records if f.filter(r)]
    assert len(passed) == 1 and f.suppressed == 99
    assert f.filter(logging.LogRecord("aiokafka.x", logging.DEBUG, "f", 1, "debug %s", (1,), None))


def test_host_name_checks_can_be_switched_off_but_verification_stays(tmp_path: Path) -> None:
    from stream.security.tls import TlsFiles, client_context

    ca = Authority(tmp_path)
    strict = client_context(TlsFiles("CRM_KPI_KAFKA_SSL", str(ca.ca)))
    lax = client_context(TlsFiles("CRM_KPI_KAFKA_SSL", str(ca.ca), check_hostname=False))
    assert strict.check_hostname and not lax.check_hostname
    assert strict.verify_mode == lax.verify_mode == ssl.CERT_REQUIRED
