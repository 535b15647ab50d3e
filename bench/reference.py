"""An independent, deliberately plain model of the core KPIs, for streams inside every window.

Imports nothing from the product, so a bug in the product cannot hide in it.
Used by the benchmark and by the crash and outage tests: events all fall in the
last hour (no window edges), tickets are answered at most once, in order.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any


def make_stream(
    n: int, seed: int, now: datetime, span_s: float = 3300
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(unique events, events to publish including ~5% producer retries), all within `span_s` seconds."""
    rnd = random.Random(seed)
    lo = span_s / 55  # events stay clear of "now" (and of future skew)
    events: list[dict[str, Any]] = []
    # A ticket's events concern its customer: keyed producers put them in one partition
    # (docs/events.md), where the worker joins them.
    open_tickets: list[tuple[str, datetime, str]] = []
    for i in range(n):
        t = now - timedelta(seconds=rnd.uniform(lo, span_s))
        base = {"event_id": f"x{seed}-{i}", "occurred_at": t.isoformat(), "customer_id": f"c{rnd.randrange(2000)}"}
        roll = rnd.random()
        if roll < 0.25:
            base.pop("customer_id")
            e = {
                **base,
                "type": "lead.created",
                "lead_id": f"l{i}",
                "lead_source": rnd.choice(["web", "ads", "tiktok", None]),
            }
        elif roll < 0.32:
            e = {**base, "type": "lead.converted", "lead_id": f"l{i}"}
        elif roll < 0.36:
            amount = round(rnd.uniform(1, 5000), 2)
            e = {**base, "type": "deal.created", "deal_id": f"d{i}", "amount": amount, "currency": "EUR"}
        elif roll < 0.45:
            amount = round(rnd.uniform(1, 5000), 2)
            currency = rnd.choice(["EUR", "USD"])
            e = {**base, "type": "deal.won", "deal_id": f"d{i}", "amount": amount, "currency": currency}
            if rnd.random() < 0.5:
                e["deal_created_at"] = (t - timedelta(seconds=rnd.uniform(1, 86400))).isoformat()
        elif roll < 0.5:
            e = {**base, "type": "deal.lost", "deal_id": f"d{i}"}
        elif roll < 0.7:
            tid = f"t{i}"
            opened_at = now - timedelta(seconds=rnd.uniform(span_s * 0.55, span_s))
            e = {
                **base,
                "occurred_at": opened_at.isoformat(),
                "type": "ticket.opened",
                "ticket_id": tid,
                "priority": rnd.choice(["low", "normal", "high", "urgent"]),
            }
            open_tickets.append((tid, opened_at, base["customer_id"]))
        elif roll < 0.85 and open_tickets:
            tid, opened_at, customer = open_tickets.pop(rnd.randrange(len(open_tickets)))
            answered_at = opened_at + timedelta(seconds=rnd.uniform(1, span_s * 0.5))
            e = {**base, "customer_id": customer, "occurred_at": answered_at.isoformat(), "type": "ticket.answered"}
            e["ticket_id"] = tid
        else:
            kind = rnd.choice(["nps", "csat", "ces"])
            score = rnd.randint(*{"nps": (0, 10), "csat": (1, 5), "ces": (1, 7)}[kind])
            e = {**base, "type": "survey.submitted", "survey_id": f"s{i}", "kind": kind, "score": score}
        events.append(e)
    published: list[dict[str, Any]] = []
    for e in events:
        published.append(e)
        if rnd.random() < 0.05:
            published.append(e)  # a producer retry: same event, new record
    return events, published


def expected(events: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """Core figures of the stream (every window holds every event)."""
    types = Counter(e["type"] for e in events)
    sources = Counter(
        (
            e.get("lead_source")
            if e.get("lead_source") in ("web", "ads")
            else ("unknown" if e.get("lead_source") is None else "other")
        )
        for e in events
        if e["type"] == "lead.created"
    )
    won: dict[str, float] = defaultdict(float)
    for e in events:
        if e["type"] == "deal.won":
            won[e["currency"]] += e["amount"]
    opened = {e["ticket_id"]: e for e in events if e["type"] == "ticket.opened"}
    # An answer whose opening is unknown (and carries no ticket_opened_at) has no response time.
    responses = [
        (
            datetime.fromisoformat(e["occurred_at"]) - datetime.fromisoformat(opened[e["ticket_id"]]["occurred_at"])
        ).total_seconds()
        for e in events
        if e["type"] == "ticket.answered" and e["ticket_id"] in opened
    ]
    answered = {e["ticket_id"] for e in events if e["type"] == "ticket.answered"}
    awaiting = Counter(t["priority"] for tid, t in opened.items() if tid not in answered)
    nps = [e["score"] for e in events if e["type"] == "survey.submitted" and e["kind"] == "nps"]
    csat = [e["score"] for e in events if e["type"] == "survey.submitted" and e["kind"] == "csat"]
    ces = [e["score"] for e in events if e["type"] == "survey.submitted" and e["kind"] == "ces"]
    return {
        "types": dict(types),
        "sources": dict(sources),
        "won_amount": dict(won),
        "fr_count": len(responses),
        "fr_average": sum(responses) / len(responses),
        "awaiting": dict(awaiting),
        "nps": 100 * (sum(s >= 9 for s in nps) - sum(s <= 6 for s in nps)) / len(nps),
        "csat": sum(s >= 4 for s in csat) / len(csat),
        "ces": sum(ces) / len(ces),
        "now": now.astimezone(UTC),
    }


def assert_matches(
    scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    want: dict[str, Any],
    windows: tuple[str, ...] = ("1h", "30d"),
) -> None:
    """Compare exporter series (of `windows` holding every event) with the oracle's figures, exactly."""
    import pytest

    def series(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return name, tuple(sorted(labels.items()))

    def get(name: str, **labels: str) -> float:
        return scraped[series(name, **labels)]

    # Every count that is off, not only the first: which types and windows tell a lost batch
    # (all types short) from a window edge (only the 1h window short).
    counts = {
        (window, kind): (scraped.get(series("crm_window_events", window=window, type=kind)), n)
        for window in windows
        for kind, n in want["types"].items()
    }
    wrong = {where: got_want for where, got_want in counts.items() if got_want[0] != got_want[1]}
    assert not wrong, f"crm_window_events (window, type): (served, expected): {wrong}"
    for window in windows:
        for source, n in want["sources"].items():
            assert get("crm_leads_created", window=window, lead_source=source) == n
        for cur, amount in want["won_amount"].items():
            assert get("crm_deal_won_amount", window=window, currency=cur) == pytest.approx(amount, rel=1e-12)
        assert get("crm_first_response_seconds_average", window=window) == pytest.approx(want["fr_average"], rel=1e-9)
        assert get("crm_nps_score", window=window) == pytest.approx(want["nps"], rel=1e-12)
        assert get("crm_csat_ratio", window=window) == pytest.approx(want["csat"], rel=1e-12)
        assert get("crm_ces_average", window=window) == pytest.approx(want["ces"], rel=1e-12)
    for prio in ("low", "normal", "high", "urgent"):
        assert get("crm_tickets_awaiting_response", priority=prio) == want["awaiting"].get(prio, 0)
