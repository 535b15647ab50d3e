"""The command line: settings errors, schemas export, publish validation, kpis output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from schemas import json_schemas
from stream.devtools.reference_tables import render_readme
from stream.settings import load_settings
from tests.support.harness import ROOT

ENV = {k: v for k, v in os.environ.items() if not k.startswith("CRM_KPI_")}


def crm_kpi(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        cwd=ROOT,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CRM_KPI_WINDOWS", "1h,banana"),
        ("CRM_KPI_SLA", "urgent=15m"),
        ("CRM_KPI_WORKER_PORT", "99999"),
        ("CRM_KPI_REDIS_URL", "http://x"),
        ("CRM_KPI_WINDOWS", "90s"),
    ],
)
def test_bad_setting_stops_with_one_line_naming_it(name: str, value: str) -> None:
    result = crm_kpi("kpis", env={name: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], result.stderr


def test_secrets_are_not_echoed() -> None:
    with pytest.raises(Exception) as info:
        load_settings(redis_password=123)
    assert "123" not in str(info.value)


def test_committed_json_schemas_match_the_models(tmp_path: Path) -> None:
    result = crm_kpi("schemas", "export", str(tmp_path))
    assert result.returncode == 0, result.stderr
    fresh = {p.name: p.read_text() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_text() for p in (ROOT / "schemas" / "json").iterdir()}
    assert fresh == committed == json_schemas(), "run: crm-kpi schemas export schemas/json"


def test_readme_reference_tables_match_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    assert render_readme(readme) == readme, "run: python -m stream.devtools.reference_tables README.md"


def _line(**fields: Any) -> str:
    base = {"event_id": "p1", "type": "lead.created", "occurred_at": "2026-01-01T00:00:00Z", "lead_id": "l"}
    return json.dumps({**base, **fields})


async def test_publish_refuses_a_file_with_bad_lines_then_publishes_it_with_skip(
    kafka_bootstrap: str, redis_url: str, redis: Any, prefix: str, tmp_path: Path
) -> None:
    env = {
        "CRM_KPI_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "CRM_KPI_REDIS_URL": redis_url,
        "CRM_KPI_TOPIC_PREFIX": f"{prefix}.",
        "CRM_KPI_REDIS_KEY_PREFIX": prefix,
    }
    assert crm_kpi("topics", "create", env=env).returncode == 0
    file = tmp_path / "events.jsonl"
    file.write_text("\n".join([_line(event_id="a"), "{oops", _line(event_id="b", lead_id=7), _line(event_id="c"), ""]))
    refused = crm_kpi("publish", str(file), env=env)
    assert refused.returncode == 1
    assert "line 2" in refused.stderr and "line 3" in refused.stderr and "nothing published" in refused.stderr
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    try:
        topic = f"{prefix}.leads"
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        assert partitions
        assert sum((await consumer.end_offsets(partitions)).values()) == 0
        ok = crm_kpi("publish", "--skip-invalid", str(file), env=env)
        assert ok.returncode == 0, ok.stderr
        assert "published 2" in ok.stderr
        assert sum((await consumer.end_offsets(partitions)).values()) == 2
    finally:
        await consumer.stop()


def test_kpis_json_on_an_empty_store(redis_url: str, prefix: str) -> None:
    result = crm_kpi("kpis", "--json", env={"CRM_KPI_REDIS_URL": redis_url, "CRM_KPI_REDIS_KEY_PREFIX": prefix})
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    # Nothing happened yet: counts are 0, ratios are absent (no NaN).
    names = {r["metric"] for r in rows}
    assert "crm_tickets_awaiting_response" in names
    assert "crm_nps_score" not in names and "crm_deal_win_ratio" not in names


def test_the_demos_documented_defaults() -> None:
    """README 'What the demo shows': 500 customers, the last two hours backfilled, a refresh every 1.5 s."""
    from stream.cli.commands import demo

    defaults = {p.name: p.default for p in demo.params}
    assert (defaults["customers"], defaults["history"], defaults["refresh"]) == (500, "2h", 1.5)
    readme = (ROOT / "README.md").read_text()
    assert "500 customers" in readme and "the last two hours" in readme and "every 1.5 s" in readme
