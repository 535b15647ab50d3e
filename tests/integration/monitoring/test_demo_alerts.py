"""The shipped alert rules over the demo's simulated CRM: quiet when healthy, each incident fires its alerts.

The demo's world (`DemoOptions` defaults: its customers and its history, as
`crm-kpi demo` backfills them) is replayed through the product's fold and
atomic Lua write on a real Redis with a virtual clock (`tests/support/replay.py`),
and read back minute by minute with the exporter's read over the last 90
minutes. `promtool test rules` - Prometheus's own rule engine on a simulated
clock - then evaluates the committed rule files (deploy/prometheus/rules/)
over those series at every minute: 90 simulated minutes in a few seconds, long
enough for every alert's `for` (at most 1h) to run its course.

Healthy: no alert fires at any minute, and the headline figures (at-risk share,
backlog per agent, SLA breach ratio, satisfaction, churn) are in the ranges of
a real company. With an incident (begun 12 hours before
the end, as in the demo), exactly the alerts `INCIDENT_ALERTS` names fire at
the end. Without `promtool` on PATH this skips locally and fails under CI.
"""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
import yaml

from deploy import monitoring
from stream.devtools.demo import DemoOptions
from stream.devtools.synthetic_crm import INCIDENT_ALERTS, INCIDENT_LEAD_S, INCIDENTS, SimConfig, agents_for, generate
from tests.support.config import clean_settings
from tests.support.harness import required_tool
from tests.support.replay import EXPORTER, Replay, Scrapes, replay_world

SPAN_MIN = 90
SEED = 20261126
_FAILED = re.compile(r"alertname: (\w+), time: (\S+), ")


def _replay_end() -> float:
    """The replay's end (its virtual "now"): the next Wednesday 15:00 UTC.

    A fixed moment of the week, so the alerts evaluated do not depend on when the suite
    runs: a KPI window's mix follows the time of day (in the evening the tickets answered
    in the last hour are the afternoon's slow tail; a 24h window then holds more of an
    incident begun 12 hours before). In the future, not the past: the replay's writes set
    absolute expiry times from the virtual clock.
    """
    now = datetime.now(UTC)
    end = (now + timedelta(days=(2 - now.weekday()) % 7)).replace(hour=15, minute=0, second=0, microsecond=0)
    return (end if end > now else end + timedelta(days=7)).timestamp()


async def _scrapes(redis_url: str, prefix: str, incidents: frozenset[str]) -> Scrapes:
    opts = DemoOptions()
    end_s = _replay_end()
    start = datetime.fromtimestamp(end_s - opts.history_s, UTC)
    config = SimConfig(
        seed=SEED,
        customers=opts.customers,
        incidents=incidents,
        incident_start=datetime.fromtimestamp(end_s - INCIDENT_LEAD_S, UTC),
    )
    settings = clean_settings(redis_url=redis_url, redis_key_prefix=prefix)
    client = aioredis.Redis.from_url(redis_url)
    reader = redis.Redis.from_url(redis_url)
    try:
        replay = Replay(client, reader, settings)
        return await replay_world(replay, generate(config, start, duration_s=opts.history_s), end_s, SPAN_MIN)
    finally:
        await client.aclose()
        reader.close()


def _minutes(text: str) -> int:
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert m, text
    hours, minutes, _ = (int(g or 0) for g in m.groups())
    return 60 * hours + minutes


def fired_alerts(scrapes: Scrapes, tmp_path: Path, eval_minutes: list[int]) -> dict[int, set[str]]:
    """{minute: names of the alerts firing then}, evaluated by promtool over the shipped rules."""
    promtool = required_tool("promtool", "prometheus")
    names = sorted({a.name for a in monitoring.ALERTS})
    test = {
        "rule_files": [str(p) for p in sorted(monitoring.RULES_DIR.glob("*.yml"))],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": scrapes.input_series(),
                "alert_rule_test": [
                    {"eval_time": f"{m}m", "alertname": name, "exp_alerts": []} for m in eval_minutes for name in names
                ],
            }
        ],
    }
    path = tmp_path / "demo_alerts_test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False), encoding="utf-8")
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    fired: dict[int, set[str]] = {m: set() for m in eval_minutes}
    for name, at in _FAILED.findall(output):
        fired[_minutes(at)].add(name)
    assert (result.returncode == 0) == (not any(fired.values())), output[-3000:]
    return fired


@pytest.fixture(scope="module")
async def healthy(redis_url: str) -> Scrapes:
    return await _scrapes(redis_url, f"healthy{SEED}", frozenset())


@pytest.mark.slow
async def test_a_healthy_demo_fires_no_alert(healthy: Scrapes, tmp_path: Path) -> None:
    assert healthy.steps == SPAN_MIN + 1
    fired = fired_alerts(healthy, tmp_path, list(range(SPAN_MIN + 1)))
    assert not {m: names for m, names in fired.items() if names}, "alerts fired in a healthy demo"


@pytest.mark.slow
async def test_the_healthy_demo_looks_like_a_real_crm(healthy: Scrapes) -> None:
    """Headline figures at the end of the healthy replay, in the ranges a support or sales lead expects."""
    now = SPAN_MIN

    def value(name: str, **labels: str) -> float:
        key = (name, tuple(sorted({**labels, **EXPORTER}.items())))
        return healthy.values[key][now]

    def total(name: str, **labels: str) -> float:
        wanted = set(labels.items())
        return sum(
            by_step.get(now, 0.0)
            for (metric, key), by_step in healthy.values.items()
            if metric == name and wanted <= set(key)
        )

    customers = DemoOptions().customers
    active = value("crm_customers_active")
    assert 0.97 * customers < active < 1.03 * customers
    # A handful at risk: a few per thousand customers, not every one of them.
    assert 0.0002 < value("crm_customers_at_risk") / active < 0.05
    # Backlog per support agent: a few to a couple dozen open tickets.
    assert 2 < total("crm_tickets_open") / agents_for(customers) < 25
    # Tickets per customer and month (from the 7d window): a few.
    tickets_7d = value("crm_window_events", window="7d", type="ticket.opened")
    assert 0.8 < tickets_7d * 30 / 7 / active < 4
    # SLA mostly met: urgent and high always, the others nearly always, yet not a perfect record.
    for priority in ("urgent", "high"):
        assert total("crm_first_response_sla_breach_ratio", window="7d", priority=priority) == 0
        assert total("crm_tickets_awaiting_response_over_sla", priority=priority) == 0
    normal = value("crm_first_response_sla_breach_ratio", window="7d", priority="normal")
    assert 0.001 < normal < 0.05
    assert 10 * 60 < value("crm_first_response_seconds", window="7d", quantile="0.5") < 2 * 3600
    assert value("crm_first_response_seconds", window="7d", quantile="0.9") < 4 * 3600
    # Satisfaction and churn of a healthy B2B company.
    assert 0.85 < value("crm_csat_ratio", window="7d") < 0.99
    assert 20 < value("crm_nps_score", window="7d") < 75
    assert value("crm_customer_churn_ratio", window="7d") < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("incident", sorted(INCIDENTS))
async def test_each_incident_fires_its_alerts(incident: str, redis_url: str, prefix: str, tmp_path: Path) -> None:
    scrapes = await _scrapes(redis_url, prefix, frozenset({incident}))
    fired = fired_alerts(scrapes, tmp_path, [SPAN_MIN])
    assert fired[SPAN_MIN] == INCIDENT_ALERTS[incident]


@pytest.mark.slow
async def test_a_real_demo_under_a_real_prometheus_stays_quiet(tmp_path: Path) -> None:
    """`crm-kpi demo` as a user runs it (default world), scraped by a real Prometheus with the shipped
    rules: once the backfill is applied, no alert is pending or firing for a minute of live demo."""
    import asyncio
    import json
    import os
    import signal

    from stream.devtools.servers import free_port
    from tests.integration.monitoring.test_prometheus import Prometheus
    from tests.support.harness import scrape, wait_for

    binary = required_tool("prometheus", "prometheus")
    worker_port, exporter_port = free_port(), free_port()
    demo = _start_demo(
        [
            "--seed",
            str(SEED),
            "--refresh",
            "5",
            "--worker-port",
            str(worker_port),
            "--exporter-port",
            str(exporter_port),
        ],
        tmp_path / "demo.log",
    )
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in sorted(monitoring.RULES_DIR.glob("*.yml"))],
        "scrape_configs": [
            {"job_name": monitoring.WORKER_JOB, "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]},
            {"job_name": monitoring.EXPORTER_JOB, "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    prometheus = Prometheus(binary, tmp_path / "prometheus.yml", tmp_path / "tsdb", tmp_path / "prometheus.log")
    exporter = f"http://127.0.0.1:{exporter_port}/metrics"
    try:
        await wait_for(prometheus.ready, 60, "prometheus to be ready")

        async def backfilled() -> bool:
            assert demo.poll() is None, (tmp_path / "demo.log").read_text()
            try:
                samples = scrape(exporter)
            except OSError:
                return False
            active = samples.get(("crm_customers_active", ()), 0)
            tickets = samples.get(("crm_window_events", (("type", "ticket.opened"), ("window", "7d"))), 0)
            return active > 0.97 * DemoOptions().customers and tickets > 3000

        await wait_for(backfilled, 240, "the demo's backfill to be applied")
        await asyncio.sleep(20)  # rates over a few scrapes; the live demo goes on

        async def alerts() -> list[dict[str, str]]:
            status, body = await prometheus.get("/api/v1/alerts")
            assert status == 200, body
            return [a["labels"] | {"state": a["state"]} for a in body["data"]["alerts"]]

        for _ in range(12):  # a minute of live demo, checked every 5 s
            active = await alerts()
            assert not active, json.dumps(active, indent=1)
            await asyncio.sleep(5)
        _, body = await prometheus.get("/api/v1/rules")
        rules = [r for g in body["data"]["groups"] for r in g["rules"]]
        assert {r["name"] for r in rules} == {a.name for a in monitoring.ALERTS}
        assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]
    finally:
        prometheus.stop()
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()


def _start_demo(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`crm-kpi demo` in its own process group (as a terminal job), with no CRM_KPI_* from this shell."""
    import os
    import sys

    from tests.support.harness import ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_KPI_")}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "stream", "demo", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
