"""End to end for the full catalog (full-catalog types and metrics): Kafka, a real worker, Redis, a real exporter.

Every full-catalog series scraped from the exporter is compared with hand-computed values
(comments per block), with the issue's edge cases: reopened tickets, deals changing
stage then won, invoices paid before and after due_at, churn with acquisitions in the
same window, customers crossing the churn-risk threshold and falling back under it,
events arriving before the events they join, and events older than every window.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis as redis_sync

from stream.exporter.collector import kpi_samples, snapshot
from stream.kafka.topics import create_topics
from stream.kpis import METRICS
from tests.support.harness import ROOT, WorkerProcess, applied, produce, scrape, settings_of, stack_env, wait_for

# Each test takes its own NOW (`build`, from the `stack` fixture) and must read its figures within
# HEADROOM_S of it: the nearest edge is 10 minutes away (r6 leaves the customers at risk).
HEADROOM_S = 300.0
NOW: datetime  # set by build()
WINDOWS = ("1h", "24h", "7d", "30d")
H, D = 60, 1440  # minutes
TZ = "America/New_York"
# Yesterday in New York is a holiday: business hours skip it.
HOLIDAY: date
LEADS: list[dict[str, Any]]
DEALS: list[dict[str, Any]]
ORDERS: list[dict[str, Any]]
CUSTOMERS: list[dict[str, Any]]
MARKETING: list[dict[str, Any]]
ACTIVITIES: list[dict[str, Any]]
TICKETS: list[dict[str, Any]]
RISK: list[dict[str, Any]]
FAMILIES: dict[str, list[dict[str, Any]]]


def t(minutes_ago: float) -> datetime:
    return NOW - timedelta(minutes=minutes_ago)


def at(minutes_ago: float) -> str:
    return t(minutes_ago).isoformat().replace("+00:00", "Z")


_ids = iter(range(1, 10**6))


def ev(event_type: str, minutes_ago: float, /, **fields: Any) -> dict[str, Any]:
    return {"event_id": f"k{next(_ids)}", "type": event_type, "occurred_at": at(minutes_ago), **fields}


def risk_ticket(tid: str, customer: str, minutes_ago: float, category: str | None = None) -> dict[str, Any]:
    extra = {"category": category} if category else {}
    return ev("ticket.opened", minutes_ago, ticket_id=tid, customer_id=customer, priority="low", **extra)


def survey(customer: str, minutes_ago: float, kind: str, score: int) -> dict[str, Any]:
    return ev("survey.submitted", minutes_ago, survey_id=f"s-{customer}-{kind}", customer_id=customer, kind=kind,
              score=score)  # fmt: skip


RISK_DROP_MIN = 10  # r6 falls back under the threshold this many minutes after NOW
def build(now: datetime) -> None:
    """The stream relative to `now` (each test's own clock), and yesterday's date in New York."""
    global NOW, HOLIDAY, LEADS, DEALS, ORDERS, CUSTOMERS, MARKETING, ACTIVITIES, TICKETS, RISK, FAMILIES
    NOW = now
    HOLIDAY = (NOW.astimezone(ZoneInfo(TZ)) - timedelta(days=1)).date()
    LEADS = [
        ev("lead.created", 10, lead_id="L1", lead_source="web"),
        ev("lead.created", 2 * H, lead_id="L2"),
        ev("lead.created", 3 * D, lead_id="L3"),
        ev("lead.created", 10 * D, lead_id="L4"),
        ev("lead.qualified", 5, lead_id="L1"),
        ev("lead.qualified", 2 * D, lead_id="L3"),
        ev("lead.lost", 90, lead_id="L2", reason="no budget"),
        ev("lead.lost", 9 * D, lead_id="L4", reason="student"),  # outside the allow-list: other
        ev("lead.lost", 20, lead_id="L5"),  # no reason: unknown
    ]

    EUR = {"currency": "EUR"}
    DEALS = [
        ev("deal.created", 3 * D, deal_id="D1", customer_id="c1", amount=1000, **EUR),
        ev("deal.stage_changed", 2 * D, deal_id="D1", customer_id="c1", stage="proposal"),
        # Older, arrives later:
        ev("deal.stage_changed", 2.5 * D, deal_id="D1", customer_id="c1", stage="qualification"),
        ev("deal.created", 20 * H, deal_id="D2", customer_id="c2", amount=500, currency="USD", stage="negotiation"),
        ev("deal.stage_changed", 10 * H, deal_id="D2", customer_id="c2", stage="proposal"),
        ev("deal.won", 30, deal_id="D2", customer_id="c2", amount=500, currency="USD"),  # stage changed, then won
        ev("deal.created", 5 * D, deal_id="D3", customer_id="c3", amount=200, **EUR),
        ev("deal.stage_changed", 4 * D, deal_id="D3", customer_id="c3", stage="legal review"),  # capped: other
        ev("deal.created", 2 * H, deal_id="D4", customer_id="c4", amount=300, **EUR),
        ev("deal.lost", 50, deal_id="D4", customer_id="c4", reason="price"),
        ev("deal.stage_changed", 10, deal_id="D5", customer_id="c5", stage="negotiation"),  # before its creation
        ev("deal.created", 20, deal_id="D5", customer_id="c5", amount=50.5, **EUR),
        ev("deal.created", 40 * D, deal_id="D6", customer_id="c6", amount=10, **EUR),  # late: still open now
        ev("quote.sent", 3 * H, quote_id="Q1", customer_id="c1", amount=100, **EUR),
        ev("quote.sent", 2 * D, quote_id="Q2", customer_id="c1", amount=50, **EUR, deal_id="D1"),
        ev("quote.sent", 10, quote_id="Q3", customer_id="c3", amount=30, **EUR),
    ]

    ORDERS = [
        ev("order.placed", 2 * H, order_id="O1", customer_id="c1", amount=100, **EUR, quote_id="Q1", promised_at=at(H)),
        ev("order.delivered", 90, order_id="O1", customer_id="c1"),  # on time
        ev("order.placed", 30, order_id="O2", customer_id="c1", amount=50, **EUR, quote_id="Q2", promised_at=at(25)),
        ev("order.delivered", 20, order_id="O2", customer_id="c1"),  # late
        # A quote never sent:
        ev("order.placed", 20, order_id="O3", customer_id="c2", amount=80, currency="USD", quote_id="Q9"),
        ev("order.delivered", 10, order_id="O3", customer_id="c2"),  # no promise: not in the ratio
        ev("order.placed", 5, order_id="O4", customer_id="c3", amount=30, **EUR, quote_id="Q3", promised_at=at(-D)),
        ev("order.placed", 3 * D, order_id="O5", customer_id="c2", amount=20, currency="USD", promised_at=at(2.5 * D)),
        ev("order.delivered", 2 * D, order_id="O5", customer_id="c2"),  # late
        ev("order.placed", 10 * D, order_id="O6", customer_id="c1", amount=70, **EUR),
        ev("order.placed", 400 * D, order_id="O7", customer_id="c4", amount=40, **EUR),  # late; > 365 d before O8
        ev("order.placed", 10, order_id="O8", customer_id="c4", amount=60, **EUR),
        ev("order.placed", 200 * D, order_id="O9", customer_id="c5", amount=10, **EUR),  # late; 185 d before O10
        ev("order.placed", 15 * D, order_id="O10", customer_id="c5", amount=20, **EUR),
        ev("order.delivered", 150, order_id="O11", customer_id="c6"),  # before its order: on time
        ev("order.placed", 3 * H, order_id="O11", customer_id="c6", amount=25, **EUR, promised_at=at(2 * H)),
        # Invoices: I1 overdue; I2 not yet due; I3 paid before due; I4 paid after due;
        # I5 issued long ago (late) and overdue; I6 paid before its issue arrived.
        ev("invoice.issued", 10 * D, invoice_id="I1", customer_id="c1", amount=100, **EUR, due_at=at(5 * D)),
        ev("invoice.issued", 3 * D, invoice_id="I2", customer_id="c2", amount=200, **EUR, due_at=at(-2 * D)),
        ev("invoice.issued", 20 * D, invoice_id="I3", customer_id="c3", amount=50, currency="USD", due_at=at(10 * D)),
        ev("invoice.paid", 12 * D, invoice_id="I3", customer_id="c3"),
        ev("invoice.issued", 15 * D, invoice_id="I4", customer_id="c4", amount=80, **EUR, due_at=at(7 * D)),
        ev("invoice.paid", D, invoice_id="I4", customer_id="c4"),
        ev("invoice.issued", 100 * D, invoice_id="I5", customer_id="c5", amount=30, currency="USD", due_at=at(70 * D)),
        ev("invoice.paid", H, invoice_id="I6", customer_id="c6"),
        ev("invoice.issued", 2 * D, invoice_id="I6", customer_id="c6", amount=999, **EUR, due_at=at(D)),
    ]

    CUSTOMERS = [
        ev("customer.acquired", 100 * D, customer_id="c1", segment="smb"),  # late
        ev("customer.acquired", 20 * D, customer_id="c2"),
        ev("customer.acquired", 3 * D, customer_id="c3", segment="mid"),
        ev("customer.acquired", 30, customer_id="c4"),
        ev("customer.acquired", 5 * H, customer_id="c5"),
        ev("customer.churned", 2 * D, customer_id="c6", reason="price"),  # churn before its acquisition arrives
        ev("customer.acquired", 50 * D, customer_id="c6"),  # late
        ev("customer.acquired", 10 * D, customer_id="c7"),
        ev("customer.churned", 5 * H, customer_id="c7"),  # acquired and churned in the 30d window
        ev("customer.acquired", 2 * D, customer_id="c8"),
        ev("customer.churned", 20, customer_id="c8"),  # acquired and churned in the 7d window
        ev("subscription.renewal_due", 2 * H, customer_id="c1", subscription_id="S1"),
        ev("subscription.renewal_due", 3 * D, customer_id="c2", subscription_id="S2"),
        ev("subscription.renewal_due", 20, customer_id="c3", subscription_id="S3"),
        ev("subscription.renewed", 30, customer_id="c1", subscription_id="S1"),
        ev("subscription.renewed", 2 * D, customer_id="c2", subscription_id="S2"),
    ]

    MARKETING = [
        ev("marketing.spend", 30, campaign_id="m1", channel="ads", amount=1000, **EUR),
        ev("marketing.spend", 3 * D, campaign_id="m2", channel="event", amount=500, **EUR, purpose="acquisition"),
        ev("marketing.spend", 2 * H, campaign_id="m3", channel="social", amount=300, currency="USD"),
        ev("marketing.spend", 10, campaign_id="m4", channel="email", amount=200, **EUR, purpose="retention"),
        ev("marketing.spend", 10 * D, campaign_id="m5", channel="email", amount=100, **EUR, purpose="retention"),
    ]

    ACTIVITIES = [
        ev("activity.logged", 10, user_id="u1", kind="call"),
        ev("activity.logged", 30, user_id="u1", kind="email"),
        ev("activity.logged", 2 * H, user_id="u2", kind="meeting"),
        ev("activity.logged", 3 * D, user_id="u3", kind="note"),
        ev("activity.logged", 40 * D, user_id="u3", kind="call"),  # late
        ev("activity.logged", 20 * D, user_id="u4", kind="other"),
        ev("activity.logged", 25 * D, user_id="u2", kind="call"),
    ]

    TICKETS = [
        # T1: resolved, reopened, resolved again (first resolution 2 h after opening).
        ev("ticket.opened", 5 * H, ticket_id="T1", customer_id="c1", priority="urgent"),
        ev("ticket.answered", 4 * H - 30, ticket_id="T1", customer_id="c1", author="bot"),
        ev("ticket.answered", 4 * H, ticket_id="T1", customer_id="c1"),
        ev("ticket.resolved", 3 * H, ticket_id="T1", customer_id="c1"),
        ev("ticket.reopened", 2 * H, ticket_id="T1", customer_id="c1"),
        ev("ticket.resolved", 30, ticket_id="T1", customer_id="c1"),
        # T2: resolved, then reopened: back in the backlog.
        ev("ticket.opened", 2 * D, ticket_id="T2", customer_id="c2", priority="high"),
        ev("ticket.answered", 1300, ticket_id="T2", customer_id="c2"),
        ev("ticket.resolved", 20 * H, ticket_id="T2", customer_id="c2"),
        ev("ticket.reopened", 10, ticket_id="T2", customer_id="c2"),
        # T3: open, answered; T4: resolution before its opening arrives; T5: resolved in 2 days.
        ev("ticket.opened", 40, ticket_id="T3", customer_id="c3"),
        ev("ticket.answered", 20, ticket_id="T3", customer_id="c3", public=False),
        ev("ticket.answered", 15, ticket_id="T3", customer_id="c3"),
        ev("ticket.resolved", 15, ticket_id="T4", customer_id="c4"),
        ev("ticket.opened", 45, ticket_id="T4", customer_id="c4"),
        ev("ticket.opened", 10 * D, ticket_id="T5", customer_id="c5", priority="low"),
        ev("ticket.resolved", 8 * D, ticket_id="T5", customer_id="c5"),
        ev("ticket.opened", 40 * D, ticket_id="T6", customer_id="c6", priority="low"),  # late, still open
        ev("ticket.resolved", 10, ticket_id="T7", customer_id="c7"),  # opening unknown
    ]


    RISK = [
        risk_ticket("R1", "r1", 3 * H, "complaint"),  # r1: complaint 2 + NPS 3 2 = 4
        survey("r1", 2 * H, "nps", 3),
        risk_ticket("R2", "c6", 3 * D, "cancellation"),  # c6: cancellation 3 + CES 6 1 = 4, but churned
        survey("c6", 3 * D, "ces", 6),
        *(risk_ticket(f"R3{i}", "r3", i * D) for i in range(1, 6)),  # r3: 5 tickets (2) + CSAT 1 (2) = 4
        survey("r3", D, "csat", 1),
        risk_ticket("R4", "r4", 40 * D, "complaint"),  # r4: complaint out of the 30 days; NPS 5 2 + CES 7 1 = 3
        survey("r4", 10 * D, "nps", 5),
        survey("r4", 5 * D, "ces", 7),
        risk_ticket("R5", "r5", 35 * D, "complaint"),  # r5: was at 4 until 5 days ago; now NPS 2 alone = 2
        survey("r5", 10 * D, "nps", 2),
        survey("r5", 10 * D, "csat", 5),  # a good score adds nothing
        risk_ticket("R6", "r6", 30 * D - RISK_DROP_MIN, "complaint"),  # r6: 2 + CSAT 2 2 = 4, about to fall under
        survey("r6", D, "csat", 2),
    ]

    FAMILIES = {
        "leads": LEADS,
        "deals": DEALS,
        "orders": ORDERS,
        "customers": CUSTOMERS,
        "marketing": MARKETING,
        "activities": ACTIVITIES,
        "tickets": TICKETS + [e for e in RISK if e["type"] == "ticket.opened"],
        "surveys": [e for e in RISK if e["type"] == "survey.submitted"],
    }


def in_hours(moment: datetime) -> bool:
    local = moment.astimezone(ZoneInfo(TZ))
    return local.weekday() < 5 and 9 <= local.hour < 17 and local.date() != HOLIDAY


def business_reference(start: datetime, end: datetime) -> float:
    """Brute force, second by second: an independent model of the business-hours clock."""
    return float(sum(in_hours(start + timedelta(seconds=s)) for s in range(int((end - start).total_seconds()))))


def quantiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    out = {}
    for q in (0.5, 0.9, 0.99):
        h = (len(xs) - 1) * q
        lo = int(h)
        out[str(q)] = xs[lo] + (h - lo) * (xs[min(lo + 1, len(xs) - 1)] - xs[lo])
    return out


Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def expected_series() -> Series:
    exp: Series = {}

    def put(name: str, value: float, **labels: str) -> None:
        exp[(name, tuple(sorted(labels.items())))] = value

    def per_window(name: str, values: dict[str, float], **labels: str) -> None:
        for w, v in values.items():
            put(name, v, window=w, **labels)

    # Leads: created 1h 1, 24h 2, 7d 3, 30d 4; qualified L1 (5 m), L3 (2 d).
    per_window("crm_lead_qualification_ratio", {"1h": 1, "24h": 1 / 2, "7d": 2 / 3, "30d": 2 / 4})
    lost = {
        "1h": {"unknown": 1},
        "24h": {"unknown": 1, "no budget": 1},
        "7d": {"unknown": 1, "no budget": 1},
        "30d": {"unknown": 1, "no budget": 1, "other": 1},
    }
    for w, by_reason in lost.items():
        for reason, n in by_reason.items():
            put("crm_leads_lost", n, window=w, reason=reason)
    # Open deals: D1 proposal (latest stage), D3 other, D5 negotiation, D6 new (late but current).
    for stage, n in {"new": 1, "qualification": 0, "proposal": 1, "negotiation": 1, "other": 1}.items():
        put("crm_deals_open", n, stage=stage)
    put("crm_pipeline_open_amount", 1000 + 200 + 50.5 + 10, currency="EUR")  # D2 won (USD): no series
    # First resolutions: T4 30 m (at 15 m), T1 2 h (at 3 h), T2 28 h (at 20 h), T5 2 d (at 8 d).
    res = {"1h": [1800], "24h": [1800, 7200, 100800], "7d": [1800, 7200, 100800]}
    res["30d"] = [*res["7d"], 172800]
    for w, xs in res.items():
        for q, v in quantiles(xs).items():
            put("crm_ticket_first_resolution_seconds", v, window=w, quantile=q)
    # Reopened: T1 (2 h), T2 (10 m). Resolved: T1 (3 h, 30 m), T2 (20 h), T4 (15 m), T5 (8 d), T7 (10 m).
    per_window("crm_ticket_reopen_ratio", {"1h": 1 / 3, "24h": 2 / 5, "7d": 2 / 5, "30d": 2 / 6})
    # Backlog: T2 (high, reopened), T3 and T4? T4 resolved; T3 (normal); low: T6 and every risk ticket.
    low = 1 + sum(e["type"] == "ticket.opened" for e in RISK)
    for prio, n in {"urgent": 0, "high": 1, "normal": 1, "low": low}.items():
        put("crm_tickets_open", n, priority=prio)
    # Business-hours first responses (New York, Mon-Fri 9-17, yesterday a holiday):
    # T3 (answered 15 m ago), T1 (4 h), T2 (1300 m).
    b1 = business_reference(t(5 * H), t(4 * H))
    b2 = business_reference(t(2 * D), t(1300))
    b3 = business_reference(t(40), t(15))
    for w, xs in {"1h": [b3], "24h": [b1, b2, b3], "7d": [b1, b2, b3], "30d": [b1, b2, b3]}.items():
        for q, v in quantiles(xs).items():
            put("crm_first_response_business_seconds", v, window=w, quantile=q)
    # Customers: 8 acquired, 3 churned -> 5 active. Acquired per window 1/2/4/6, churned 1/2/3/3,
    # so active at start 5/5/4/2.
    put("crm_customers_active", 5)
    start = {"1h": 5, "24h": 5, "7d": 4, "30d": 2}
    churned = {"1h": 1, "24h": 2, "7d": 3, "30d": 3}
    per_window("crm_customer_churn_ratio", {w: churned[w] / start[w] for w in WINDOWS})
    per_window("crm_customer_net_loss_ratio", {w: (start[w] - 5) / start[w] for w in WINDOWS})
    per_window("crm_subscription_renewal_ratio", {"1h": 1, "24h": 1 / 2, "7d": 2 / 3, "30d": 2 / 3})
    # Acquisition spend: EUR 1000 (30 m), USD 300 (2 h), EUR 500 (3 d).
    spend = {"1h": {"EUR": 1000}, "24h": {"EUR": 1000, "USD": 300}}
    spend["7d"] = spend["30d"] = {"EUR": 1500, "USD": 300}
    acquired = {"1h": 1, "24h": 2, "7d": 4, "30d": 6}
    leads = {"1h": 1, "24h": 2, "7d": 3, "30d": 4}
    deals = {"1h": 1, "24h": 3, "7d": 5, "30d": 5}
    retention = {"1h": 200, "24h": 200, "7d": 200, "30d": 300}
    for w in WINDOWS:
        for cur, amount in spend[w].items():
            put("crm_customer_acquisition_cost", amount / acquired[w], window=w, currency=cur)
            put("crm_cost_per_lead", amount / leads[w], window=w, currency=cur)
            put("crm_cost_per_opportunity", amount / deals[w], window=w, currency=cur)
        put("crm_retention_cost_per_customer", retention[w] / start[w], window=w, currency="EUR")
    # Orders with a sent quote: O2 (30 m), O4 (5 m), O1 (2 h); quotes sent: Q3 (10 m), Q1 (3 h), Q2 (2 d).
    per_window("crm_quote_order_ratio", {"1h": 2 / 1, "24h": 3 / 2, "7d": 3 / 3, "30d": 3 / 3})
    # Intervals (minutes) at the later order: O2 90, O3 4300, O1 14280, O10 266400.
    per_window(
        "crm_order_interval_seconds_average",
        {"1h": 60 * 4390 / 2, "24h": 60 * 18670 / 3, "7d": 60 * 18670 / 3, "30d": 60 * 285070 / 4},
    )
    # Deliveries with a promise: O2 late (20 m), O1 on time (90 m), O11 on time (150 m), O5 late (2 d).
    per_window("crm_delivery_on_time_ratio", {"1h": 0, "24h": 2 / 3, "7d": 2 / 4, "30d": 2 / 4})
    aov = {
        "1h": {"EUR": 140 / 3, "USD": 80},
        "24h": {"EUR": 265 / 5, "USD": 80},
        "7d": {"EUR": 265 / 5, "USD": 100 / 2},
        "30d": {"EUR": 355 / 7, "USD": 100 / 2},
    }
    for w, by_cur in aov.items():
        for cur, v in by_cur.items():
            put("crm_order_value_average", v, window=w, currency=cur)
    # Ordering customers: 1h c1 c2 c3 c4; 24h + c6, c1 twice; 7d c2 twice; 30d + c5, c1 three times.
    per_window("crm_repeat_purchase_ratio", {"1h": 0, "24h": 1 / 5, "7d": 2 / 5, "30d": 2 / 6})
    # CLV: 30d orders 9 / 6 customers = 1.5, churn 3/2 = 1.5: the average order value itself.
    put("crm_customer_lifetime_value", 355 / 7, currency="EUR")
    put("crm_customer_lifetime_value", 50, currency="USD")
    put("crm_receivables_outstanding_amount", 300, currency="EUR")  # I1 + I2
    put("crm_receivables_outstanding_amount", 30, currency="USD")  # I5
    put("crm_invoices_overdue", 2)  # I1, I5
    per_window("crm_crm_users_active", {"1h": 1, "24h": 2, "7d": 3, "30d": 4})
    activities = {
        "1h": {"call": 1, "email": 1},
        "24h": {"call": 1, "email": 1, "meeting": 1},
        "7d": {"call": 1, "email": 1, "meeting": 1, "note": 1},
        "30d": {"call": 2, "email": 1, "meeting": 1, "note": 1, "other": 1},
    }
    for w, by_kind in activities.items():
        for kind, n in by_kind.items():
            put("crm_activities", n, window=w, kind=kind)
    put("crm_customers_at_risk", 3)  # r1, r3, r6
    return exp


CATALOG = {m.name for m in METRICS if not m.core}


def crm_kpi(env: dict[str, str], *args: str) -> str:
    """Run a crm-kpi command with the stack's settings; its stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", "stream", *args],
        cwd=ROOT,
        env={**os.environ, **env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout


@pytest.fixture
def stack(kafka_bootstrap: str, redis_url: str, prefix: str, tmp_path: Any) -> Any:
    build(datetime.now(UTC).replace(microsecond=0))
    env = stack_env(
        kafka_bootstrap,
        redis_url,
        prefix,
        topic_partitions="3",
        business_timezone=TZ,
        business_hours="mon-fri 09:00-17:00",
        business_holidays=f"{HOLIDAY.isoformat()},{date(2000, 1, 1).isoformat()}",
    )
    worker = WorkerProcess(env, "worker", tmp_path / "worker.log")
    exporter = WorkerProcess(env, "exporter", tmp_path / "exporter.log")
    yield env, worker, exporter
    worker.stop()
    exporter.stop()


async def test_every_catalog_series_is_exact(stack: Any, redis: Any, kafka_bootstrap: str) -> None:
    env, worker, exporter = stack
    settings = settings_of(env)
    await create_topics(settings)
    worker.start()
    exporter.start()

    messages = []
    for family, events in FAMILIES.items():
        for e in events:
            key = str(e.get("customer_id") or e["event_id"]).encode()
            messages.append((settings.topic(family), key, json.dumps(e).encode()))
    ends = await produce(kafka_bootstrap, messages)
    await wait_for(lambda: applied(redis, env["CRM_KPI_REDIS_KEY_PREFIX"], ends), 60, "the worker to apply all")

    url = f"http://127.0.0.1:{env['CRM_KPI_EXPORTER_PORT']}/metrics"

    async def exporter_up() -> bool:
        try:
            scrape(url)
            return True
        except OSError:
            return False

    await wait_for(exporter_up, 30, "the exporter to serve /metrics")
    got = {k: v for k, v in scrape(url).items() if k[0] in CATALOG}
    read_within = time.time() - NOW.timestamp()
    assert read_within <= HEADROOM_S, f"read {read_within:.0f}s after NOW: beyond the stream's {HEADROOM_S:.0f}s"
    want = expected_series()
    assert set(got) == set(want), (sorted(set(got) - set(want)), sorted(set(want) - set(got)))
    for series, value in want.items():
        if series[0] in ("crm_ticket_first_resolution_seconds", "crm_first_response_business_seconds"):
            assert got[series] == pytest.approx(value, rel=0.01), series  # the sketch's documented bound
        else:
            assert got[series] == pytest.approx(value, rel=1e-9, abs=1e-9), series
    assert {name for name, _ in want} == CATALOG  # every full-catalog metric is asserted

    # crm-kpi kpis on this populated store: the exporter's series, the same values (README).
    rows = json.loads(crm_kpi(env, "kpis", "--json"))
    printed = {(r["metric"], tuple(sorted(r["labels"].items()))): r["value"] for r in rows}
    assert {k: v for k, v in printed.items() if k[0] in CATALOG} == got
    table = crm_kpi(env, "kpis")
    assert all(name in table for name in {k[0] for k in printed}), table

    # crm-kpi at-risk: the right customers, points and reasons; r6 falls under at NOW + 10 min.
    rows = json.loads(crm_kpi(env, "at-risk", "--json"))
    assert [(r["customer_id"], r["points"]) for r in rows] == [("r1", 4), ("r3", 4), ("r6", 4)]
    reasons = {r["customer_id"]: {x["reason"]: (x["count"], x["points"]) for x in r["reasons"]} for r in rows}
    assert reasons["r1"] == {"complaint ticket": (1, 2), "NPS 0-6": (1, 2)}
    assert reasons["r3"] == {"CSAT <= 2": (1, 2), "ticket beyond the third": (2, 2)}
    assert reasons["r6"] == {"complaint ticket": (1, 2), "CSAT <= 2": (1, 2)}
    until = datetime.fromisoformat(rows[2]["at_risk_until"].replace("Z", "+00:00"))
    assert until == t(-RISK_DROP_MIN)
    top = crm_kpi(env, "at-risk", "--top", "1")
    assert "r1" in top and "r3" not in top

    # Read as if RISK_DROP_MIN + 1 minutes later: r6 has fallen back under the threshold.
    client = redis_sync.Redis.from_url(env["CRM_KPI_REDIS_URL"])
    try:
        later = snapshot(client, settings, now=(NOW + timedelta(minutes=RISK_DROP_MIN + 1)).timestamp())
        values = {name: v for name, labels, v in kpi_samples(later) if name == "crm_customers_at_risk"}
        assert values == {"crm_customers_at_risk": 2}
    finally:
        client.close()
