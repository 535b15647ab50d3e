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
    lines = [
        _line(event_id="a"),
        "{oops",
        _line(event_id="b", lead_id=7),
        _line(event_id="c"),
        _line(event_id="d", occurred_at="2099-01-01T00:00:00Z"),  # the worker would dead-letter it
        "",
    ]
    file.write_text("\n".join(lines))
    refused = crm_kpi("publish", str(file), env=env)
    assert refused.returncode == 1
    assert "line 2" in refused.stderr and "line 3" in refused.stderr and "nothing published" in refused.stderr
    assert "line 5" in refused.stderr and "future_timestamp" in refused.stderr
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
    """README 'What the demo shows': 20,000 customers, the last seven days backfilled, a refresh every 1.5 s."""
    from stream.cli.commands import demo

    defaults = {p.name: p.default for p in demo.params}
    assert (defaults["customers"], defaults["history"], defaults["refresh"]) == (20_000, "7d", 1.5)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "20,000 customers" in readme and "the last seven days" in readme and "every 1.5 s" in readme


# --- tables that fit, plain lines when piped -------------------------------------------------------


@pytest.fixture(scope="module")
async def simulated_store(redis_url: str) -> dict[str, str]:
    """A month of a 3,000-customer simulated CRM in Redis (own key prefix): env for the read commands."""
    import time
    from datetime import UTC, datetime

    import redis
    import redis.asyncio as aioredis

    from stream.devtools.synthetic_crm import SimConfig, generate
    from tests.support.config import clean_settings
    from tests.support.replay import Replay

    prefix = f"tables{os.getpid()}"
    now = time.time()
    settings = clean_settings(redis_url=redis_url, redis_key_prefix=prefix)
    client, reader = aioredis.Redis.from_url(redis_url), redis.Redis.from_url(redis_url)
    try:
        replay = Replay(client, reader, settings)
        events = list(
            generate(
                SimConfig(seed=4, customers=3000), datetime.fromtimestamp(now - 30 * 86400, UTC), duration_s=30 * 86400
            )
        )
        for i in range(0, len(events), 5000):
            await replay.apply(events[i : i + 5000], now)
    finally:
        await client.aclose()
        reader.close()
    return {"CRM_KPI_REDIS_URL": redis_url, "CRM_KPI_REDIS_KEY_PREFIX": prefix}


def _render(table: Any) -> list[str]:
    from io import StringIO

    from rich.console import Console

    console = Console(width=80, file=StringIO(), color_system=None, legacy_windows=False)
    console.print(table)
    return console.file.getvalue().splitlines()  # type: ignore[attr-defined, no-any-return]


def test_kpis_and_at_risk_fit_80_columns_without_cutting_anything(simulated_store: dict[str, str]) -> None:
    from stream.exporter.collector import snapshot, sync_redis
    from stream.exporter.tables import at_risk_table, kpi_table
    from stream.store import Keys, read_at_risk
    from tests.support.config import clean_settings

    settings = clean_settings(
        redis_url=simulated_store["CRM_KPI_REDIS_URL"], redis_key_prefix=simulated_store["CRM_KPI_REDIS_KEY_PREFIX"]
    )
    client = sync_redis(settings)
    snap = snapshot(client, settings)
    lines = _render(kpi_table(snap))
    assert max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    assert "…" not in text
    # Every label set is there whole on its row, so no two rows read alike.
    shown = {line[: 2 + 28].strip() for line in lines}
    for row in json.loads(crm_kpi("kpis", "--json", env=simulated_store).stdout):
        labels = ", ".join(v for k, v in row["labels"].items() if k != "window")
        assert not labels or labels in shown, labels
    rows = read_at_risk(client, Keys(settings.redis_key_prefix), __import__("time").time())
    assert len(rows) >= 3
    lines = _render(at_risk_table(rows))
    assert max(len(line) for line in lines) <= 80
    ids = [line.split()[0] for line in lines if line.strip().startswith("cus-")]
    assert sorted(ids) == sorted(r["customer_id"] for r in rows)  # whole ids, one per customer


def test_piped_output_is_plain_tab_separated_lines(simulated_store: dict[str, str]) -> None:
    kpis = crm_kpi("kpis", env=simulated_store)
    assert kpis.returncode == 0, kpis.stderr
    lines = kpis.stdout.splitlines()
    assert lines[0] == "metric\tlabels\twindow\tvalue"
    as_json = json.loads(crm_kpi("kpis", "--json", env=simulated_store).stdout)
    assert len(lines) == len(as_json) + 1
    for line, row in zip(lines[1:], as_json, strict=True):  # values may move between the two calls
        metric, labels, window, value = line.split("\t")
        assert metric == row["metric"] and float(value) == float(value)  # a number, not NaN
        assert window == row["labels"].get("window", "-")
        assert labels == (",".join(f"{k}={v}" for k, v in row["labels"].items() if k != "window") or "-")
    at_risk = crm_kpi("at-risk", env=simulated_store)
    assert at_risk.returncode == 0, at_risk.stderr
    rows = [line.split("\t") for line in at_risk.stdout.splitlines()]
    assert rows[0] == ["customer_id", "points", "at_risk_until", "reasons"]
    listed = json.loads(crm_kpi("at-risk", "--json", env=simulated_store).stdout)
    assert [r[0] for r in rows[1:]] == [r["customer_id"] for r in listed]
    assert all(int(r[1]) >= 4 and r[3] for r in rows[1:])
