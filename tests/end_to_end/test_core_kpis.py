"""End to end: events through Kafka, a real `crm-kpi worker`, Redis, and a real exporter.

Every core series scraped from the exporter is compared with hand-computed values.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stream.kafka.topics import create_topics
from stream.kpis import METRICS
from tests.support.harness import WorkerProcess, applied, produce, read_topic, scrape, settings_of, stack_env, wait_for

# Each test takes its own NOW (`build`) and must read its figures within HEADROOM_S of it: the
# nearest edge of the stream is 10 minutes away (a ticket answered 50 minutes ago in the 1h window).
HEADROOM_S = 300.0
NOW: datetime  # set by build() at the start of each test
LEADS: list[dict[str, Any]]
DEALS: list[dict[str, Any]]
TICKETS: list[dict[str, Any]]
SURVEYS: list[dict[str, Any]]
DUPLICATES: list[tuple[str, dict[str, Any]]]
BAD: list[tuple[str, bytes, str]]
WINDOW_MIN = {"1h": 60, "24h": 1440, "7d": 7 * 1440, "30d": 30 * 1440}


def at(minutes_ago: float, tz_hours: int = 0) -> str:
    moment = (NOW - timedelta(minutes=minutes_ago)).astimezone(
        __import__("datetime").timezone(timedelta(hours=tz_hours))
    )
    return moment.isoformat().replace("+00:00", "Z")


_ids = iter(range(1, 10**6))


def ev(event_type: str, minutes_ago: float, /, **fields: Any) -> dict[str, Any]:
    return {"event_id": f"e{next(_ids)}", "type": event_type, "occurred_at": at(minutes_ago), **fields}


def build(now: datetime) -> None:
    """The stream, relative to `now` (each test's own clock): sets LEADS, DEALS, TICKETS, SURVEYS, DUPLICATES, BAD."""
    global NOW, LEADS, DEALS, TICKETS, SURVEYS, DUPLICATES, BAD
    NOW = now
    # (family, event, minutes ago) for every valid event, in publish order.
    LEADS = [
        ev("lead.created", 10, lead_id="L1", lead_source="web"),
        ev("lead.created", 20, lead_id="L2", lead_source="ads", source="crm"),
        ev("lead.created", 180, lead_id="L3"),
        ev("lead.created", 2 * 1440, lead_id="L4", lead_source="tiktok"),
        ev("lead.created", 10 * 1440, lead_id="L5", lead_source="web", unknown_extra={"x": 1}),
        ev("lead.converted", 5, lead_id="L1", customer_id="c1"),
        ev("lead.converted", 1.9 * 1440, lead_id="L4", customer_id="c4"),
        ev("lead.created", 40 * 1440, lead_id="L6", lead_source="web"),  # late
    ]
    DEALS = [
        ev("deal.created", 180, deal_id="D1", customer_id="c1", amount=100, currency="EUR"),
        ev("deal.won", 30, deal_id="D1", customer_id="c1", amount=100, currency="EUR"),
        ev("deal.won", 40, deal_id="D2", customer_id="c2", amount=50.5, currency="USD", deal_created_at=at(120)),
        ev("deal.won", 2 * 1440, deal_id="D3", customer_id="c3", amount=300, currency="EUR"),
        ev("deal.lost", 20, deal_id="D4", customer_id="c4", reason="price"),
        ev("deal.created", 10 * 1440, deal_id="D5", customer_id="c5", amount=0.1, currency="EUR"),
        ev("deal.won", 9 * 1440, deal_id="D5", customer_id="c5", amount=0.1, currency="EUR"),
        ev("deal.won", 9 * 1440, deal_id="D6", customer_id="c6", amount=0.2, currency="EUR"),
    ]
    TICKETS = [
        ev("ticket.opened", 50, ticket_id="T1", customer_id="c1", priority="urgent"),
        ev("ticket.answered", 49, ticket_id="T1", customer_id="c1", author="bot"),
        ev("ticket.answered", 48, ticket_id="T1", customer_id="c1", public=False),
        ev("ticket.answered", 30, ticket_id="T1", customer_id="c1", agent_id="a1"),
        ev("ticket.answered", 10, ticket_id="T1", customer_id="c1", agent_id="a2"),  # not first
        ev("ticket.opened", 40, ticket_id="T2", customer_id="c2", priority="high", channel="email"),
        ev("ticket.answered", 35, ticket_id="T2", customer_id="c2"),
        ev("ticket.answered", 20, ticket_id="T3", customer_id="c3", ticket_opened_at=at(80), priority="low"),
        ev("ticket.answered", 15, ticket_id="T4", customer_id="c4"),  # opening unknown
        ev("ticket.opened", 180, ticket_id="T5", customer_id="c5"),
        ev("ticket.answered", 90, ticket_id="T5", customer_id="c5"),
        ev("ticket.opened", 25, ticket_id="T6", customer_id="c6"),
        ev("ticket.opened", 120, ticket_id="T7", customer_id="c7", priority="high"),
        ev("ticket.opened", 40 * 1440, ticket_id="T8", customer_id="c8", priority="low"),  # late, still awaiting
        ev("ticket.answered", 5, ticket_id="T9", customer_id="c9"),  # arrives before its opening
        ev("ticket.opened", 10, ticket_id="T9", customer_id="c9", priority="urgent"),
    ]
    SURVEYS = [
        ev("survey.submitted", 10, survey_id="S1", customer_id="c1", kind="nps", score=10),
        ev("survey.submitted", 20, survey_id="S2", customer_id="c2", kind="nps", score=9),
        ev("survey.submitted", 30, survey_id="S3", customer_id="c3", kind="nps", score=3),
        ev("survey.submitted", 180, survey_id="S4", customer_id="c4", kind="nps", score=7),
        ev("survey.submitted", 10, survey_id="S5", customer_id="c5", kind="csat", score=5),
        ev("survey.submitted", 20, survey_id="S6", customer_id="c6", kind="csat", score=2),
        ev("survey.submitted", 2 * 1440, survey_id="S7", customer_id="c7", kind="csat", score=4),
        ev("survey.submitted", 10, survey_id="S8", customer_id="c8", kind="ces", score=3),
        ev("survey.submitted", 180, survey_id="S9", customer_id="c9", kind="ces", score=6),
    ]
    # One event written with a +02:00 offset: converted to UTC, same instant.
    SURVEYS[0]["occurred_at"] = at(10, tz_hours=2)

    DUPLICATES = [("leads", LEADS[0]), ("deals", DEALS[1])]
    BIG = json.dumps(ev("lead.created", 1, lead_id="big", padding="x" * 70_000)).encode()
    BAD = [  # (family, raw bytes, reason)
        ("leads", b"not json{", "invalid_json"),
        ("deals", b"[1, 2]", "not_an_object"),
        ("tickets", BIG, "too_large"),
        ("leads", json.dumps(ev("lead.created", 1)).encode(), "invalid_fields"),
        ("leads", json.dumps(ev("lead.exploded", 1, lead_id="x")).encode(), "unknown_type"),
        (
            "leads",
            json.dumps(ev("deal.won", 1, deal_id="x", customer_id="c", amount=1, currency="EUR")).encode(),
            "wrong_topic",
        ),
        (
            "surveys",
            json.dumps(ev("survey.submitted", 1, survey_id="s", customer_id="c", kind="nps", score=11)).encode(),
            "invalid_fields",
        ),
        (
            "deals",
            json.dumps(ev("deal.won", 1, deal_id="x", customer_id="c", amount=-5, currency="EUR")).encode(),
            "invalid_fields",
        ),
        (
            "deals",
            json.dumps(ev("deal.won", 1, deal_id="x", customer_id="c", amount=5, currency="eur")).encode(),
            "invalid_fields",
        ),
        ("leads", json.dumps(ev("lead.created", -60, lead_id="future")).encode(), "future_timestamp"),
    ]


LATE = {"L6", "T8"}


def minutes_ago(event: dict[str, Any]) -> float:
    t = datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00"))
    return (NOW - t).total_seconds() / 60


def expected_window_events() -> dict[tuple[str, str], int]:
    counts: Counter[tuple[str, str]] = Counter()
    for event in LEADS + DEALS + TICKETS + SURVEYS:
        age = minutes_ago(event)
        for label, length in WINDOW_MIN.items():
            if age <= length:
                counts[(label, event["type"])] += 1
    return dict(counts)


def expected_series() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Hand-computed figures for the stream above (see the comments per block)."""
    exp: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def put(name: str, value: float, **labels: str) -> None:
        exp[(name, tuple(sorted(labels.items())))] = value

    for (window, kind), n in expected_window_events().items():
        put("crm_window_events", n, window=window, type=kind)
    leads = {
        "1h": {"web": 1, "ads": 1},
        "24h": {"web": 1, "ads": 1, "unknown": 1},
        "7d": {"web": 1, "ads": 1, "unknown": 1, "other": 1},
        "30d": {"web": 2, "ads": 1, "unknown": 1, "other": 1},
    }
    for window, by_source in leads.items():
        for source, n in by_source.items():
            put("crm_leads_created", n, window=window, lead_source=source)
    for window, ratio in {"1h": 1 / 2, "24h": 1 / 3, "7d": 2 / 4, "30d": 2 / 5}.items():
        put("crm_lead_conversion_ratio", ratio, window=window)
    # Deals: D1 (EUR 100, cycle 9000 s), D2 (USD 50.5, cycle 4800 s) in 1h; D3 (EUR 300, no
    # creation) from 7d; D5 (EUR 0.1, cycle 1 d) and D6 (EUR 0.2, no creation) in 30d; D4 lost.
    won = {"1h": 2, "24h": 2, "7d": 3, "30d": 5}
    eur = {"1h": (100, 1), "24h": (100, 1), "7d": (400, 2), "30d": (400.3, 4)}
    cycle = {"1h": 6900, "24h": 6900, "7d": 6900, "30d": (9000 + 4800 + 86400) / 3}
    for w in WINDOW_MIN:
        put("crm_deals_won", won[w], window=w)
        put("crm_deal_win_ratio", won[w] / (won[w] + 1), window=w)
        put("crm_deal_won_amount", eur[w][0], window=w, currency="EUR")
        put("crm_deal_won_amount", 50.5, window=w, currency="USD")
        put("crm_deal_size_average", eur[w][0] / eur[w][1], window=w, currency="EUR")
        put("crm_deal_size_average", 50.5, window=w, currency="USD")
        put("crm_sales_cycle_seconds_average", cycle[w], window=w)
    # First responses: T1 1200 s (urgent, breach), T2 300 s (high), T3 3600 s (low, from the
    # answer's ticket_opened_at), T9 300 s (urgent, opening arrived after the answer) in 1h;
    # T5 5400 s (normal) from 24h. T4's opening is unknown; T6, T7, T8 await a response.
    samples = {"1h": [300, 300, 1200, 3600]}
    for w in ("24h", "7d", "30d"):
        samples[w] = [300, 300, 1200, 3600, 5400]
    for w, xs in samples.items():
        for q in (0.5, 0.9, 0.99):
            h = (len(xs) - 1) * q
            lo = int(h)
            put(
                "crm_first_response_seconds",
                xs[lo] + (h - lo) * (xs[min(lo + 1, len(xs) - 1)] - xs[lo]),
                window=w,
                quantile=str(q),
            )
        put("crm_first_response_seconds_average", sum(xs) / len(xs), window=w)
        put("crm_first_response_sla_breach_ratio", 0.5, window=w, priority="urgent")
        put("crm_first_response_sla_breach_ratio", 0.0, window=w, priority="high")
        put("crm_first_response_sla_breach_ratio", 0.0, window=w, priority="low")
        if w != "1h":
            put("crm_first_response_sla_breach_ratio", 0.0, window=w, priority="normal")
    for prio, n in {"urgent": 0, "high": 1, "normal": 1, "low": 1}.items():
        put("crm_tickets_awaiting_response", n, priority=prio)
    for prio, n in {"urgent": 0, "high": 1, "normal": 0, "low": 1}.items():
        put("crm_tickets_awaiting_response_over_sla", n, priority=prio)
    for prio, minutes in {"high": 120, "normal": 25, "low": 40 * 1440}.items():
        put("crm_ticket_oldest_awaiting_response_seconds", minutes * 60, priority=prio)
    # Surveys: nps 10, 9, 3 (1h) + 7 (24h); csat 5, 2 (1h) + 4 (7d); ces 3 (1h) + 6 (24h).
    nps = {"1h": 100 * (2 - 1) / 3, "24h": 25.0, "7d": 25.0, "30d": 25.0}
    csat = {"1h": 0.5, "24h": 0.5, "7d": 2 / 3, "30d": 2 / 3}
    ces = {"1h": 3.0, "24h": 4.5, "7d": 4.5, "30d": 4.5}
    responses = {"1h": (3, 2, 1), "24h": (4, 2, 2), "7d": (4, 3, 2), "30d": (4, 3, 2)}
    for w in WINDOW_MIN:
        put("crm_nps_score", nps[w], window=w)
        put("crm_csat_ratio", csat[w], window=w)
        put("crm_ces_average", ces[w], window=w)
        for kind, n in zip(("nps", "csat", "ces"), responses[w], strict=True):
            put("crm_survey_responses", n, window=w, kind=kind)
    return exp


@pytest.fixture
def stack(kafka_bootstrap: str, redis_url: str, prefix: str, tmp_path: Any) -> Any:
    env = stack_env(kafka_bootstrap, redis_url, prefix, topic_partitions="3")
    worker = WorkerProcess(env, "worker", tmp_path / "worker.log")
    exporter = WorkerProcess(env, "exporter", tmp_path / "exporter.log")
    yield env, worker, exporter
    worker.stop()
    exporter.stop()


async def test_every_core_series_is_exact(stack: Any, redis: Any, kafka_bootstrap: str) -> None:
    env, worker, exporter = stack
    build(datetime.now(UTC).replace(microsecond=0))
    settings = settings_of(env)
    await create_topics(settings)
    worker.start()
    exporter.start()

    def topic(family: str) -> str:
        return settings.topic(family)

    def key(event: dict[str, Any]) -> bytes:
        return str(event.get("customer_id") or event["event_id"]).encode()

    messages = []
    for family, events in (("leads", LEADS), ("deals", DEALS), ("tickets", TICKETS), ("surveys", SURVEYS)):
        messages += [(topic(family), key(e), json.dumps(e).encode()) for e in events]
    messages += [(topic(f), key(e), json.dumps(e).encode()) for f, e in DUPLICATES]
    messages += [(topic(f), b"bad", raw) for f, raw, _ in BAD]
    ends = await produce(kafka_bootstrap, messages)
    await wait_for(
        lambda: applied(redis, env["CRM_KPI_REDIS_KEY_PREFIX"], ends), 60, "the worker to apply every record"
    )

    exporter_url = f"http://127.0.0.1:{env['CRM_KPI_EXPORTER_PORT']}/metrics"

    async def exporter_up() -> bool:
        try:
            scrape(exporter_url)
            return True
        except OSError:
            return False

    await wait_for(exporter_up, 30, "the exporter to serve /metrics")
    scraped_at = time.time()
    core = {m.name for m in METRICS if m.core}  # the others: tests/end_to_end/test_catalog_kpis.py
    got = {k: v for k, v in scrape(exporter_url).items() if k[0] in core}
    want = expected_series()
    assert set(got) == set(want), (sorted(set(got) - set(want)), sorted(set(want) - set(got)))
    lag = scraped_at - NOW.timestamp()
    assert lag <= HEADROOM_S, f"read {lag:.0f}s after NOW: beyond the stream's {HEADROOM_S:.0f}s headroom"
    for series, value in want.items():
        name = series[0]
        if name == "crm_first_response_seconds":
            assert got[series] == pytest.approx(value, rel=0.01), series  # the sketch's documented bound
        elif name == "crm_ticket_oldest_awaiting_response_seconds":
            assert value <= got[series] <= value + lag + 1, series  # an age: it grows from NOW to the scrape
        else:
            assert got[series] == pytest.approx(value, rel=1e-9, abs=1e-9), series

    dead = await read_topic(kafka_bootstrap, settings.dead_letter_topic, len(BAD))
    assert len(dead) == len(BAD)
    by_value = {r.value: dict((k, v.decode()) for k, v in r.headers) for r in dead}
    for family, raw, reason in BAD:
        headers = by_value[raw]
        assert headers["reason"] == reason
        assert headers["source_topic"] == topic(family)
        assert int(headers["source_partition"]) >= 0 and int(headers["source_offset"]) >= 0
        assert headers["detail"]

    ops = scrape(f"http://127.0.0.1:{env['CRM_KPI_WORKER_PORT']}/metrics")
    reasons = Counter(reason for _, _, reason in BAD)
    for reason, n in reasons.items():
        assert ops[("crm_events_invalid_total", (("reason", reason),))] == n
    assert ops[("crm_events_duplicate_total", ())] == len(DUPLICATES)
    assert ops[("crm_events_late_total", ())] == len(LATE)
    processed = Counter(e["type"] for e in LEADS + DEALS + TICKETS + SURVEYS)
    for kind, n in processed.items():
        assert ops[("crm_events_processed_total", (("type", kind),))] == n
