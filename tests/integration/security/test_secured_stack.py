"""The whole product secured end to end, against real servers, with exact figures.

- Kafka: SASL_SSL with SCRAM-SHA-512, StandardAuthorizer, and the worker holding exactly
  the ACLs docs/security.md lists (applied from the commands in the page).
- Redis: TLS only, the worker and the exporter as the ACL users docs/security.md lists
  (the exporter read-only), their passwords read from secret files.
- /metrics of both: TLS and basic auth from one web configuration file; a real Prometheus
  scrapes both over TLS with basic auth.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml

from bench.reference import assert_matches, expected, make_stream
from schemas import TOPIC_FAMILY
from stream.devtools.servers import free_port
from stream.kafka.topics import create_topics
from tests.integration.monitoring.test_prometheus import Prometheus
from tests.integration.security.conftest import WebFiles, fetch, scrape_secure
from tests.support.harness import (
    ROOT,
    WorkerProcess,
    applied,
    produce,
    read_topic,
    required_tool,
    settings_of,
    wait_for,
)
from tests.support.secure_kafka import Acl, SecureKafka, acls_from_commands
from tests.support.secure_redis import ADMIN_PASSWORD, SecureRedis

WORKER_PASSWORD = "redis-worker-pass-Mm3v"
EXPORTER_PASSWORD = "redis-exporter-pass-Ty6d"
DOCS = (ROOT / "docs" / "security.md").read_text()


def _redis_rules(user: str, prefix: str) -> str:
    """The docs' ACL rules of a Redis user, for this test's key prefix."""
    line = re.search(rf"^ACL SETUSER {user} on >\S+ (.+)$", DOCS, re.M)
    assert line, f"docs/security.md lists no ACL for {user}"
    return line[1].replace("{crm:", f"{{{prefix}:")


def _worker_acls(kafka: SecureKafka, prefix: str, variant: str) -> list[Acl]:
    """The worker's Kafka ACLs as docs/security.md lists them, for this test's topics, group and principal."""
    acls = acls_from_commands(
        DOCS,
        replace={
            "crm.dead-letter": f"{prefix}.dead-letter",
            "crm.repartition": f"{prefix}.repartition",
            "crm.": f"{prefix}.",
            "crm-kpi-worker": f"{prefix}-workers",
        },
        principals={"User:crm-kpi-worker": kafka.principal(variant)},
    )
    mine = [a for a in acls if a.principal == kafka.principal(variant)]
    # Read+Describe on the topics, Read on the group, Write+Describe on dead-letter and on repartition
    assert len(mine) == 7, mine
    return mine


def _stack(
    kafka: SecureKafka, redis_server: SecureRedis, web: WebFiles, prefix: str, tmp_path: Path, variant: str
) -> tuple[dict[str, str], dict[str, str]]:
    """(worker env, exporter env): secure Kafka, TLS Redis with ACL users (passwords from files), web config."""
    secrets = {}
    for role, password in (("worker", WORKER_PASSWORD), ("exporter", EXPORTER_PASSWORD)):
        redis_server.add_user(f"{prefix}-{role}", password, _redis_rules(f"crm-kpi-{role}", prefix))
        directory = tmp_path / f"{role}-secrets"
        directory.mkdir()
        (directory / "CRM_KPI_REDIS_PASSWORD").write_text(password + "\n")
        secrets[role] = str(directory)
    common = {
        "CRM_KPI_REDIS_URL": redis_server.url(tls=True),
        "CRM_KPI_REDIS_TLS_CAFILE": str(redis_server.authority.ca),
        "CRM_KPI_REDIS_KEY_PREFIX": prefix,
        "CRM_KPI_TOPIC_PREFIX": f"{prefix}.",
        "CRM_KPI_KAFKA_GROUP_ID": f"{prefix}-workers",
        "CRM_KPI_WEB_CONFIG_FILE": str(web.path),
        "CRM_KPI_WORKER_HOST": "127.0.0.1",
        "CRM_KPI_EXPORTER_HOST": "127.0.0.1",
        "CRM_KPI_WORKER_PORT": str(free_port()),
        "CRM_KPI_EXPORTER_PORT": str(free_port()),
    }
    worker = {**common, **kafka.env(variant), "CRM_KPI_REDIS_USERNAME": f"{prefix}-worker",
              "CRM_KPI_SECRETS_DIR": secrets["worker"]}
    exporter = {**common, "CRM_KPI_REDIS_USERNAME": f"{prefix}-exporter", "CRM_KPI_SECRETS_DIR": secrets["exporter"]}
    return worker, exporter


def _plaintext(kafka: SecureKafka, env: dict[str, str]) -> dict[str, str]:
    keep = {k: v for k, v in env.items() if not k.startswith("CRM_KPI_KAFKA_") or k == "CRM_KPI_KAFKA_GROUP_ID"}
    return {**keep, "CRM_KPI_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap}


def _messages(topic_prefix: str, events: list[dict[str, Any]]) -> list[tuple[str, bytes, bytes]]:
    return [
        (f"{topic_prefix}{TOPIC_FAMILY[e['type']]}", str(e.get("customer_id", e["event_id"])).encode(),
         json.dumps(e).encode())
        for e in events
    ]


@pytest.mark.slow
async def test_secured_stack_counts_exactly(
    secure_kafka: SecureKafka, secure_redis: SecureRedis, web_files: WebFiles, prefix: str, tmp_path: Path
) -> None:
    prometheus_binary = required_tool("prometheus", "prometheus")
    variant = "sasl_ssl-scram512"
    worker_env, exporter_env = _stack(secure_kafka, secure_redis, web_files, prefix, tmp_path, variant)
    await create_topics(settings_of(_plaintext(secure_kafka, worker_env)))  # as the administrator
    acls = _worker_acls(secure_kafka, prefix, variant)
    secure_kafka.grant(acls)

    now = datetime.now(UTC).replace(microsecond=0)
    events, published = make_stream(1500, seed=12, now=now)
    bad = [(f"{prefix}.leads", b"k", b"not json{"), (f"{prefix}.tickets", b"k", b'{"type": "ticket.opened"}')]
    ends = await produce(secure_kafka.bootstrap, _messages(f"{prefix}.", published) + bad)

    worker = WorkerProcess(worker_env, "worker", tmp_path / "worker.log").start()
    exporter = WorkerProcess(exporter_env, "exporter", tmp_path / "exporter.log").start()
    worker_url = f"https://127.0.0.1:{worker_env['CRM_KPI_WORKER_PORT']}"
    exporter_url = f"https://127.0.0.1:{exporter_env['CRM_KPI_EXPORTER_PORT']}"
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": job, "scheme": "https",
                "tls_config": {"ca_file": str(web_files.ca)},
                "basic_auth": {"username": web_files.user, "password_file": str(tmp_path / "metrics-password")},
                "static_configs": [{"targets": [url.removeprefix("https://")]}],
            }
            for job, url in (("crm-kpi-worker", worker_url), ("crm-kpi-exporter", exporter_url))
        ],
    }
    (tmp_path / "metrics-password").write_text(web_files.password)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus = Prometheus(prometheus_binary, tmp_path / "prometheus.yml", tmp_path / "tsdb", tmp_path / "prom.log")
    admin = aioredis.Redis(host="127.0.0.1", port=secure_redis.port, password=ADMIN_PASSWORD)
    try:
        await wait_for(lambda: applied(admin, prefix, ends), 120, "the worker to apply every record")
        # Exact figures through the read-only exporter user over TLS, scraped with TLS and basic auth.
        assert_matches(await asyncio.to_thread(scrape_secure, exporter_url + "/metrics", web_files),
                       expected(events, now))
        ops = await asyncio.to_thread(scrape_secure, worker_url + "/metrics", web_files)
        for kind, n in Counter(e["type"] for e in events).items():
            assert ops[("crm_events_processed_total", (("type", kind),))] == n, kind
        assert ops[("crm_events_duplicate_total", ())] == len(published) - len(events)
        assert ops[("crm_worker_healthy", ())] == 1
        assert ops[("crm_worker_misconfigured", ())] == 0
        # The invalid records reached the dead-letter topic through the worker's own producer.
        dead = await read_topic(secure_kafka.bootstrap, f"{prefix}.dead-letter", 2)
        assert sorted(dict(r.headers)["reason"] for r in dead) == [b"invalid_fields", b"invalid_json"]

        # A real Prometheus scrapes both over TLS with basic auth.
        await wait_for(prometheus.ready, 60, "prometheus to be ready")

        async def both_up() -> bool:
            _, body = await prometheus.get("/api/v1/query", {"query": "up == 1"})
            return {r["metric"]["job"] for r in body["data"]["result"]} == {"crm-kpi-worker", "crm-kpi-exporter"}

        await wait_for(both_up, 60, "prometheus to scrape the worker and the exporter over TLS with basic auth")
        _, body = await prometheus.get("/api/v1/query", {"query": "sum(crm_events_processed_total)"})
        assert float(body["data"]["result"][0]["value"][1]) == len(events)

        for url in (worker_url, exporter_url):
            # No credentials, wrong ones: 401 with a challenge. Only /metrics and /-/healthy exist.
            assert (await asyncio.to_thread(fetch, url + "/metrics", web_files))[0] == 401
            assert (await asyncio.to_thread(fetch, url + "/metrics", web_files, (web_files.user, "wrong")))[0] == 401
            assert await asyncio.to_thread(fetch, url + "/-/healthy", web_files) == (200, "OK\n")
            for page in ("/", "/router/", "/table/", "/metricsx"):
                status = (await asyncio.to_thread(fetch, url + page, web_files, (web_files.user, web_files.password)))
                assert status[0] == 404, (url, page)
            # Plain HTTP to the TLS port gets no metrics.
            with pytest.raises(OSError):
                await asyncio.to_thread(fetch, url.replace("https:", "http:") + "/metrics")
    finally:
        prometheus.stop()
        exporter.stop()
        code = worker.stop()
        await admin.aclose()
        secure_kafka.revoke(acls)
    assert code == 0, (tmp_path / "worker.log").read_text()[-3000:]


@pytest.mark.slow
async def test_worker_names_the_missing_right_and_turns_unhealthy(
    secure_kafka: SecureKafka, secure_redis: SecureRedis, web_files: WebFiles, prefix: str, tmp_path: Path
) -> None:
    """The docs' ACLs minus Write on the dead-letter topic: one ERROR line naming it, red health, then recovery."""
    variant = "sasl_ssl-scram512"
    worker_env, _ = _stack(secure_kafka, secure_redis, web_files, prefix, tmp_path, variant)
    await create_topics(settings_of(_plaintext(secure_kafka, worker_env)))
    acls = _worker_acls(secure_kafka, prefix, variant)
    write_dead_letters = [a for a in acls if a.operation == "Write" and a.name == f"{prefix}.dead-letter"]
    secure_kafka.grant([a for a in acls if a not in write_dead_letters])
    log = tmp_path / "worker.log"
    worker = WorkerProcess(worker_env, "worker", log).start()
    url = f"https://127.0.0.1:{worker_env['CRM_KPI_WORKER_PORT']}"
    expected_line = (
        f"cannot start: Kafka denies Write on topic {prefix}.dead-letter to SCRAM-SHA-512 user 'scram512-user' "
        "(an ACL is missing); retrying every 30s until it is fixed"
    )
    try:
        async def misconfigured() -> bool:
            try:
                ops = await asyncio.to_thread(scrape_secure, url + "/metrics", web_files)
            except OSError:
                return False
            return ops.get(("crm_worker_misconfigured", ())) == 1

        await wait_for(misconfigured, 60, "crm_worker_misconfigured 1")
        ops = await asyncio.to_thread(scrape_secure, url + "/metrics", web_files)
        assert ops[("crm_worker_healthy", ())] == 0
        assert ops[("crm_worker_dependency_up", (("dependency", "kafka"),))] == 0
        assert await asyncio.to_thread(fetch, url + "/-/healthy", web_files) == (503, "unhealthy\n")
        text = log.read_text()
        lines = [line.rstrip() for line in text.splitlines()]
        denied = [line for line in lines if "Kafka denies" in line]
        assert len(denied) == 1 and denied[0].endswith(expected_line), text
        assert "[ERROR]" in denied[0]
        assert "Traceback" not in text and "Logging error" not in text

        # The right granted: the next retry (within 30 s) starts consuming and the health turns green.
        secure_kafka.grant(write_dead_letters)
        started = time.monotonic()

        async def healthy() -> bool:
            ops = await asyncio.to_thread(scrape_secure, url + "/metrics", web_files)
            return ops.get(("crm_worker_healthy", ())) == 1

        await wait_for(healthy, 45, "the worker to start once the right is granted")
        print(f"healthy {time.monotonic() - started:.1f}s after the grant")
        assert await asyncio.to_thread(fetch, url + "/-/healthy", web_files) == (200, "OK\n")
    finally:
        code = worker.stop()
        secure_kafka.revoke(acls)
    assert code == 0, log.read_text()[-3000:]


def test_secured_compose_stack_is_documented() -> None:
    """docs/security.md names the override file and the script that makes its secrets."""
    assert "docker-compose.secure.yml" in DOCS
    assert (ROOT / "docker-compose.secure.yml").is_file()
    assert (ROOT / "deploy" / "secure" / "make-secrets.sh").is_file()
    subprocess.run(["bash", "-n", str(ROOT / "deploy" / "secure" / "make-secrets.sh")], check=True)
