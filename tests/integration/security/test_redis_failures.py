"""Redis refusing, failing or freezing: one line, the right exit status or health, nothing lost.

Against `redis-server` with a plain and a TLS port, and ACL users (tests/support/secure_redis.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bench.reference import assert_matches, expected, make_stream
from stream.devtools.servers import free_port
from stream.kafka.topics import create_topics
from tests.integration.security.conftest import WebFiles, fetch, scrape_secure
from tests.support.cli import crm_kpi, one_line
from tests.support.harness import WorkerProcess, applied, messages, produce, settings_of, wait_for
from tests.support.pki import Authority
from tests.support.secure_kafka import SecureKafka
from tests.support.secure_redis import ADMIN_PASSWORD, SecureRedis

READER_RULES = "resetkeys %R~{{{p}}}:* resetchannels -@all +evalsha_ro +script|load +mget +hget +hgetall +exists " \
    "+zcard +zcount +zrange +zrangebyscore"
PASSWORD = "redis-user-pass-Hq5s"


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Authority(tmp_path_factory.mktemp("other-ca"), "another CA").ca


# (case, URL kind, extra settings, expected line after "crm-kpi: ")
CASES: list[tuple[str, str, dict[str, str], str]] = [
    ("wrong password", "tls", {"redis_username": "{user}", "redis_password": "not-the-password"},
     r"Redis at 127\.0\.0\.1:\d+ refused user '{user}': wrong password, or the user is disabled"),
    ("no password where one is required", "tls", {},
     r"Redis at 127\.0\.0\.1:\d+ requires authentication: set CRM_KPI_REDIS_PASSWORD \(and a user name\)"),
    ("a right the user lacks", "tls", {"redis_username": "{user}-norights", "redis_password": PASSWORD},
     r"Redis user '{user}-norights' at 127\.0\.0\.1:\d+ lacks a permission: .*"),
    ("a CA that did not sign the server", "tls", {"redis_tls_cafile": "{other_ca}", "redis_password": ADMIN_PASSWORD},
     r"TLS handshake with Redis at 127\.0\.0\.1:\d+ failed: .*certificate.* \(check CRM_KPI_REDIS_TLS_CAFILE\)"),
    ("TLS to the plain port", "tls-to-plain", {"redis_password": ADMIN_PASSWORD},
     r"TLS handshake with Redis at 127\.0\.0\.1:\d+ timed out \(is it a TLS port\? a plain port needs redis://\)"),
    ("plain to the TLS port", "plain-to-tls", {"redis_password": ADMIN_PASSWORD},
     r"Redis at 127\.0\.0\.1:\d+ closed the connection \(is it a TLS port\? use a rediss:// URL\)"),
    ("nothing listening", "nothing", {},
     r"Redis unreachable at 127\.0\.0\.1:\d+ \(CRM_KPI_REDIS_URL\): .*"),
]


@pytest.mark.parametrize(("kind", "settings", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_kpis_fails_in_one_line(
    secure_redis: SecureRedis, prefix: str, other_ca: Path, kind: str, settings: dict[str, str], expected: str
) -> None:
    user = f"{prefix}-reader"
    secure_redis.add_user(user, PASSWORD, READER_RULES.format(p=prefix))
    secure_redis.add_user(f"{user}-norights", PASSWORD, "resetkeys resetchannels -@all")
    url = {
        "tls": secure_redis.url(tls=True),
        "tls-to-plain": f"rediss://127.0.0.1:{secure_redis.port}/0",
        "plain-to-tls": f"redis://127.0.0.1:{secure_redis.tls_port}/0",
        "nothing": f"redis://127.0.0.1:{free_port()}/0",
    }[kind]
    env = {"CRM_KPI_REDIS_URL": url, "CRM_KPI_REDIS_KEY_PREFIX": prefix}
    if url.startswith("rediss:"):
        env["CRM_KPI_REDIS_TLS_CAFILE"] = str(secure_redis.authority.ca)
    env.update({f"CRM_KPI_{k.upper()}": v.format(user=user, other_ca=other_ca) for k, v in settings.items()})
    # Both read commands share the client: the second is run for the first case only.
    for command in ("kpis", "at-risk") if expected == CASES[0][3] else ("kpis",):
        run = crm_kpi(env, command)
        line = one_line(run)
        assert run.code == 1, run.output
        assert re.fullmatch("crm-kpi: " + expected.format(user=re.escape(user)), line), line
        assert PASSWORD not in run.output and ADMIN_PASSWORD not in run.output


def test_kpis_reads_over_tls_as_the_read_only_user(secure_redis: SecureRedis, prefix: str) -> None:
    user = f"{prefix}-reader"
    secure_redis.add_user(user, PASSWORD, READER_RULES.format(p=prefix))
    env = {
        "CRM_KPI_REDIS_URL": secure_redis.url(tls=True, user=user, password=PASSWORD),
        "CRM_KPI_REDIS_TLS_CAFILE": str(secure_redis.authority.ca), "CRM_KPI_REDIS_KEY_PREFIX": prefix,
    }
    run = crm_kpi(env, "kpis", "--json")
    assert run.code == 0, run.output
    assert isinstance(json.loads(run.stdout), list)
    assert PASSWORD not in run.output


def _env(kafka: SecureKafka, redis_server: SecureRedis, web: WebFiles, prefix: str, user: str) -> dict[str, str]:
    return {
        "CRM_KPI_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "CRM_KPI_REDIS_URL": redis_server.url(tls=True),
        "CRM_KPI_REDIS_TLS_CAFILE": str(redis_server.authority.ca),
        "CRM_KPI_REDIS_USERNAME": user,
        "CRM_KPI_REDIS_PASSWORD": PASSWORD,
        "CRM_KPI_REDIS_KEY_PREFIX": prefix,
        "CRM_KPI_TOPIC_PREFIX": f"{prefix}.",
        "CRM_KPI_KAFKA_GROUP_ID": f"{prefix}-workers",
        "CRM_KPI_TOPIC_PARTITIONS": "2",
        "CRM_KPI_WEB_CONFIG_FILE": str(web.path),
        "CRM_KPI_WORKER_HOST": "127.0.0.1",
        "CRM_KPI_WORKER_PORT": str(free_port()),
        "CRM_KPI_EXPORTER_HOST": "127.0.0.1",
        "CRM_KPI_EXPORTER_PORT": str(free_port()),
    }


@pytest.mark.slow
async def test_a_missing_redis_right_is_not_retried_as_an_outage(
    secure_kafka: SecureKafka, secure_redis: SecureRedis, web_files: WebFiles, prefix: str, tmp_path: Path
) -> None:
    """The worker's user without EVALSHA: the batch write is refused (NOPERM): one ERROR line, every 30 s
    at most, crm_worker_misconfigured 1; once the right is granted the batch goes through, exactly."""
    from tests.integration.security.test_secured_stack import _redis_rules

    user = f"{prefix}-worker"
    rules = _redis_rules("crm-kpi-worker", prefix)
    secure_redis.add_user(user, PASSWORD, rules.replace("+evalsha ", ""))
    env = _env(secure_kafka, secure_redis, web_files, prefix, user)
    await create_topics(settings_of(env))
    now = datetime.now(UTC).replace(microsecond=0)
    events, published = make_stream(300, seed=5, now=now)
    ends = await produce(secure_kafka.bootstrap, messages(env, published))
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env, "worker", log).start()
    url = f"https://127.0.0.1:{env['CRM_KPI_WORKER_PORT']}/metrics"
    admin = aioredis.Redis(host="127.0.0.1", port=secure_redis.port, password=ADMIN_PASSWORD)
    try:
        async def misconfigured() -> bool:
            try:
                ops = await asyncio.to_thread(scrape_secure, url, web_files)
            except OSError:
                return False
            return ops.get(("crm_worker_misconfigured", ())) == 1

        await wait_for(misconfigured, 60, "crm_worker_misconfigured 1")
        await asyncio.sleep(3)  # a transient failure would have been retried ~10 times by now
        ops = await asyncio.to_thread(scrape_secure, url, web_files)
        assert ops[("crm_worker_dependency_up", (("dependency", "redis"),))] == 0
        assert ops[("crm_worker_dependency_failures_total", (("dependency", "redis"), ("kind", "acl")))] == 1
        refused = [line.rstrip() for line in log.read_text().splitlines() if "lacks a permission" in line]
        assert len(refused) == 1, refused
        assert "[ERROR]" in refused[0] and refused[0].endswith("retrying every 30s until it is fixed")
        assert f"Redis user '{user}' at 127.0.0.1:{secure_redis.tls_port} lacks a permission" in refused[0]

        secure_redis.add_user(user, PASSWORD, rules)
        await wait_for(lambda: applied(admin, prefix, ends), 45, "the batch to go through once EVALSHA is granted")
        ops = await asyncio.to_thread(scrape_secure, url, web_files)
        for kind, n in Counter(e["type"] for e in events).items():
            assert ops[("crm_events_processed_total", (("type", kind),))] == n, kind
        assert ops[("crm_worker_healthy", ())] == 1
        assert "Traceback" not in log.read_text()
    finally:
        code = worker.stop()
        await admin.aclose()
    assert code == 0


@pytest.mark.slow
async def test_redis_frozen_pauses_the_worker_and_the_exporter_answers_within_a_second(
    secure_kafka: SecureKafka, secure_redis: SecureRedis, web_files: WebFiles, prefix: str, tmp_path: Path
) -> None:
    """SIGSTOP Redis for 20 s mid-stream: every scrape answers within 1 s with crm_exporter_redis_up 0; the
    worker waits, then applies everything exactly; then SIGTERM while Redis is frozen again stops it in time."""
    from tests.integration.security.test_secured_stack import _redis_rules

    secure_redis.add_user(f"{prefix}-worker", PASSWORD, _redis_rules("crm-kpi-worker", prefix))
    secure_redis.add_user(f"{prefix}-exporter", PASSWORD, _redis_rules("crm-kpi-exporter", prefix))
    env = _env(secure_kafka, secure_redis, web_files, prefix, f"{prefix}-worker")
    exporter_env = {**env, "CRM_KPI_REDIS_USERNAME": f"{prefix}-exporter"}
    await create_topics(settings_of(env))
    now = datetime.now(UTC).replace(microsecond=0)
    events, published = make_stream(2000, seed=9, now=now)
    half = len(published) // 2
    worker = WorkerProcess(env, "worker", tmp_path / "worker.log").start()
    exporter = WorkerProcess(exporter_env, "exporter", tmp_path / "exporter.log").start()
    exporter_url = f"https://127.0.0.1:{env['CRM_KPI_EXPORTER_PORT']}/metrics"
    admin = aioredis.Redis(host="127.0.0.1", port=secure_redis.port, password=ADMIN_PASSWORD)
    frozen = False
    try:
        ends = await produce(secure_kafka.bootstrap, messages(env, published[:half]))
        await wait_for(lambda: applied(admin, prefix, ends), 60, "the first half applied")
        secure_redis.freeze()
        frozen = True
        more = await produce(secure_kafka.bootstrap, messages(env, published[half:]))
        slowest, scrapes = 0.0, 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            started = time.monotonic()
            figures = await asyncio.to_thread(scrape_secure, exporter_url, web_files)
            slowest = max(slowest, time.monotonic() - started)
            scrapes += 1
            assert figures[("crm_exporter_redis_up", ())] == 0
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        print(f"{scrapes} scrapes while Redis was frozen, slowest {slowest:.2f}s")
        assert slowest < 1.0
        secure_redis.thaw()
        frozen = False
        ends = {tp: max(ends.get(tp, 0), end) for tp, end in {**ends, **more}.items()}
        await wait_for(lambda: applied(admin, prefix, ends), 90, "every record applied after the freeze")
        figures = await asyncio.to_thread(scrape_secure, exporter_url, web_files)
        assert figures[("crm_exporter_redis_up", ())] == 1
        assert_matches(figures, expected(events, now))

        # SIGTERM while Redis does not answer: the worker gives up its retries and exits in time.
        secure_redis.freeze()
        frozen = True
        started = time.monotonic()
        code = worker.stop(timeout=40)
        stopped_in = time.monotonic() - started
        print(f"stopped {stopped_in:.1f}s after SIGTERM with Redis frozen")
        assert code == 0 and stopped_in < 25
    finally:
        if frozen:
            secure_redis.thaw()
        exporter.stop()
        worker.stop()
        await admin.aclose()
    log = (tmp_path / "exporter.log").read_text()
    assert len([line for line in log.splitlines() if "crm_exporter_redis_up 0" in line]) <= 2, log
    assert "Traceback" not in (tmp_path / "worker.log").read_text()
    assert fetch  # the module's helpers stay in use


def test_a_client_certificate_when_redis_requires_one(pki: Authority, prefix: str, tmp_path: Path) -> None:
    """`tls-auth-clients yes`: without CRM_KPI_REDIS_TLS_CERTFILE one line naming it, with it the read works."""
    server = SecureRedis(pki, client_certs=True).start()
    client = pki.issue(f"{prefix}-redis-client", password="redis-client-key-pass")
    try:
        env = {
            "CRM_KPI_REDIS_URL": server.url(tls=True), "CRM_KPI_REDIS_TLS_CAFILE": str(pki.ca),
            "CRM_KPI_REDIS_PASSWORD": ADMIN_PASSWORD, "CRM_KPI_REDIS_KEY_PREFIX": prefix,
        }
        run = crm_kpi(env, "kpis")
        assert run.code == 1
        assert re.fullmatch(
            r"crm-kpi: TLS handshake with Redis at 127\.0\.0\.1:\d+ failed: .*\(does Redis require a client "
            r"certificate\? CRM_KPI_REDIS_TLS_CERTFILE\)",
            one_line(run),
        ), run.output
        env |= {"CRM_KPI_REDIS_TLS_CERTFILE": str(client.cert), "CRM_KPI_REDIS_TLS_KEYFILE": str(client.key)}
        run = crm_kpi(env, "kpis")  # the key is encrypted: its password is a setting too
        assert run.code == 2
        assert one_line(run).endswith("is encrypted: set CRM_KPI_REDIS_TLS_KEY_PASSWORD")
        env["CRM_KPI_REDIS_TLS_KEY_PASSWORD"] = "redis-client-key-pass"
        run = crm_kpi(env, "kpis", "--json")
        assert run.code == 0, run.output
        assert ADMIN_PASSWORD not in run.output and "redis-client-key-pass" not in run.output
    finally:
        server.stop()
