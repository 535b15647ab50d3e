"""No secret in any output: every command at debug level, with known secrets, through failures too.

The secrets: the SASL passwords (PLAIN sends its password inside a request that aiokafka
logs at debug level), the OAuth client secret and every token the OIDC provider issued,
the keys' passwords, the Redis passwords (in a setting, in a URL, in a secret file), the
metrics password. Every line of every command's output, and every dead-letter record's
headers and key, are searched for each.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bench.reference import make_stream
from stream.devtools.servers import free_port
from tests.integration.security.conftest import WebFiles, scrape_secure
from tests.integration.security.test_secured_stack import _redis_rules
from tests.support.cli import Run, crm_kpi
from tests.support.harness import WorkerProcess, applied, produce, read_topic, settings_of, wait_for
from tests.support.secure_kafka import SecureKafka
from tests.support.secure_redis import ADMIN_PASSWORD, SecureRedis

REDIS_PASSWORD = "redis-debug-pass-Kk29"


def _leaks(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s and s in text]


@pytest.mark.slow
async def test_no_command_prints_a_secret_at_debug_level(
    secure_kafka: SecureKafka, secure_redis: SecureRedis, web_files: WebFiles, prefix: str, tmp_path: Path
) -> None:
    secure_redis.add_user(f"{prefix}-worker", REDIS_PASSWORD, _redis_rules("crm-kpi-worker", prefix))
    secure_redis.add_user(f"{prefix}-exporter", REDIS_PASSWORD, _redis_rules("crm-kpi-exporter", prefix))
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "CRM_KPI_REDIS_PASSWORD").write_text(REDIS_PASSWORD + "\n")
    base = {
        "CRM_KPI_LOG_LEVEL": "debug",
        "CRM_KPI_TOPIC_PREFIX": f"{prefix}.",
        "CRM_KPI_KAFKA_GROUP_ID": f"{prefix}-workers",
        "CRM_KPI_TOPIC_PARTITIONS": "2",
        "CRM_KPI_REDIS_URL": secure_redis.url(tls=True),
        "CRM_KPI_REDIS_TLS_CAFILE": str(secure_redis.authority.ca),
        "CRM_KPI_REDIS_KEY_PREFIX": prefix,
        "CRM_KPI_SECRETS_DIR": str(secrets_dir),
        "CRM_KPI_WEB_CONFIG_FILE": str(web_files.path),
        "CRM_KPI_WORKER_HOST": "127.0.0.1",
        "CRM_KPI_EXPORTER_HOST": "127.0.0.1",
        "CRM_KPI_WORKER_PORT": str(free_port()),
        "CRM_KPI_EXPORTER_PORT": str(free_port()),
    }
    plain = {**base, **secure_kafka.env("sasl_ssl-plain"), "CRM_KPI_REDIS_USERNAME": f"{prefix}-worker"}
    oauth = {**base, **secure_kafka.env("sasl_ssl-oauthbearer"), "CRM_KPI_REDIS_USERNAME": f"{prefix}-exporter"}
    for variant in ("sasl_ssl-plain", "sasl_ssl-oauthbearer"):
        secure_kafka.grant_all(secure_kafka.principal(variant), f"{prefix}.", f"{prefix}-")
    runs: dict[str, Run | str] = {}

    # One-shot commands, working.
    runs["topics create"] = crm_kpi(plain, "topics", "create")
    assert runs["topics create"].code == 0, runs["topics create"].output
    now = datetime.now(UTC).replace(microsecond=0)
    _events, published = make_stream(200, seed=3, now=now)
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text("".join(json.dumps(e) + "\n" for e in published))
    runs["publish (oauth)"] = crm_kpi(oauth, "publish", str(jsonl))
    # A backfill (--start in the past) publishes at full speed; live, 50 events of the default world take minutes.
    runs["simulate (oauth)"] = crm_kpi(
        oauth, "simulate", "--events", "50", "--seed", "2", "--core-only", "--start", "2026-01-05T09:00:00Z"
    )
    for name in ("publish (oauth)", "simulate (oauth)"):
        run = runs[name]
        assert isinstance(run, Run) and run.code == 0, run

    # The worker (PLAIN over SASL_SSL, Redis over TLS as an ACL user), with invalid records to dead-letter.
    bad = [(f"{prefix}.leads", b"bad-key", b"not json{")]
    ends = await produce(secure_kafka.bootstrap, bad)
    settings = settings_of({k: v for k, v in plain.items() if k != "CRM_KPI_SECRETS_DIR"} | {
        "CRM_KPI_REDIS_PASSWORD": REDIS_PASSWORD})
    worker = WorkerProcess(plain, "worker", tmp_path / "worker.log").start()
    exporter = WorkerProcess(oauth, "exporter", tmp_path / "exporter.log").start()
    admin = aioredis.Redis(host="127.0.0.1", port=secure_redis.port, password=ADMIN_PASSWORD)
    try:
        await wait_for(lambda: applied(admin, prefix, ends), 90, "the worker to apply the records")
        await asyncio.to_thread(
            scrape_secure, f"https://127.0.0.1:{plain['CRM_KPI_WORKER_PORT']}/metrics", web_files
        )

        async def exporting() -> bool:
            try:
                await asyncio.to_thread(
                    scrape_secure, f"https://127.0.0.1:{oauth['CRM_KPI_EXPORTER_PORT']}/metrics", web_files
                )
                return True
            except OSError:
                return False

        await wait_for(exporting, 30, "the exporter")
    finally:
        worker.stop()
        exporter.stop()
        await admin.aclose()
    runs["worker"] = (tmp_path / "worker.log").read_text()
    runs["exporter"] = (tmp_path / "exporter.log").read_text()
    runs["kpis"] = crm_kpi(oauth, "kpis")
    runs["at-risk"] = crm_kpi(oauth, "at-risk", "--json")
    runs["schemas export"] = crm_kpi(plain, "schemas", "export", str(tmp_path / "schemas"))

    # The same commands failing: wrong passwords, a password in a URL, refused rights.
    wrong = {
        "CRM_KPI_KAFKA_SASL_PASSWORD": "wrong-" + "plain-password-1",
    }
    runs["topics create, wrong password"] = crm_kpi({**plain, **wrong}, "topics", "create")
    runs["publish, wrong client secret"] = crm_kpi(
        {**oauth, "CRM_KPI_KAFKA_SASL_OAUTH_CLIENT_SECRET": "wrong-client-secret-1"}, "publish", str(jsonl)
    )
    url_with_password = secure_redis.url(tls=True, user=f"{prefix}-exporter", password=REDIS_PASSWORD)
    runs["kpis, password in the URL"] = crm_kpi(
        {**{k: v for k, v in oauth.items() if k not in ("CRM_KPI_SECRETS_DIR", "CRM_KPI_REDIS_USERNAME")},
         "CRM_KPI_REDIS_URL": url_with_password}, "kpis"
    )
    runs["kpis, password twice"] = crm_kpi(
        {**oauth, "CRM_KPI_REDIS_URL": url_with_password, "CRM_KPI_REDIS_USERNAME": ""}, "kpis"
    )
    runs["kpis, malformed URL"] = crm_kpi(
        {**oauth, "CRM_KPI_REDIS_URL": f"redis:/:{REDIS_PASSWORD}@127.0.0.1:1/0"}, "kpis"
    )
    runs["kpis, wrong password"] = crm_kpi(
        {k: v for k, v in oauth.items() if k != "CRM_KPI_SECRETS_DIR"} | {
            "CRM_KPI_REDIS_PASSWORD": "wrong-redis-password-1"}, "kpis"
    )
    failing = WorkerProcess(
        {**plain, **wrong, "CRM_KPI_WORKER_PORT": str(free_port())}, "worker", tmp_path / "failing.log"
    ).start()
    try:
        await wait_for(
            lambda: asyncio.to_thread(lambda: "refused PLAIN user" in (tmp_path / "failing.log").read_text()),
            60, "the worker to report the refused password",
        )
    finally:
        failing.stop()
    runs["worker, wrong password"] = (tmp_path / "failing.log").read_text()
    in_url = runs["kpis, password in the URL"]
    assert isinstance(in_url, Run) and in_url.code == 0, in_url

    secrets = [
        *secure_kafka.secrets(), REDIS_PASSWORD, ADMIN_PASSWORD, web_files.password, *secure_kafka.oidc.issued,
        "wrong-plain-password-1", "wrong-client-secret-1", "wrong-redis-password-1",
    ]
    assert secure_kafka.oidc.issued, "the OAUTHBEARER runs fetched tokens"
    leaks = {
        name: _leaks(run if isinstance(run, str) else run.output, secrets) for name, run in runs.items()
    }
    assert not any(leaks.values()), {k: v for k, v in leaks.items() if v}
    # Debug output was produced (the test would be empty otherwise): the worker logged its SASL exchange.
    assert "SaslAuthenticate" in str(runs["worker"]) or "Sasl" in str(runs["worker"]), str(runs["worker"])[-2000:]

    dead = await read_topic(secure_kafka.bootstrap, settings.dead_letter_topic, 1)
    assert len(dead) == 1
    for record in dead:
        text = repr(record.headers) + repr(record.key)
        assert not _leaks(text, secrets), text
