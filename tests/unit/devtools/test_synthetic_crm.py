"""The synthetic event generator (stream/devtools/synthetic_crm/): determinism, validity, mix, time order,
per-customer realism, incidents."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

import schemas
from stream.devtools.synthetic_crm import (
    SLA_SECONDS,
    SLOW_RESPONSE_FACTOR,
    SimConfig,
    agents_for,
    generate,
    natural_rate,
)

START = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)  # a Monday morning

CORE_TYPES = set(schemas.CORE_TYPES)
ALL_TYPES = set(schemas.EVENT_TYPES)


# The event that creates each entity, and the entity's id field.
OPENERS = {
    "ticket.opened": "ticket_id",
    "deal.created": "deal_id",
    "lead.created": "lead_id",
    "quote.sent": "quote_id",
    "order.placed": "order_id",
    "invoice.issued": "invoice_id",
}


def _run(config: SimConfig, **bounds: Any) -> list[dict[str, Any]]:
    return list(generate(config, START, **bounds))


def _at(event: dict[str, Any], field: str = "occurred_at") -> datetime:
    return datetime.fromisoformat(event[field])


@pytest.fixture(scope="module")
def ten_thousand() -> list[dict[str, Any]]:
    return _run(SimConfig(), count=10_000)


@pytest.fixture(scope="module")
def two_weeks() -> list[dict[str, Any]]:
    """A slow stream over two weeks of event time: long enough for every follow-up kind."""
    return _run(SimConfig(seed=11, customers=800, rate=0.05), duration_s=14 * 86400)


def _first_responses(events: list[dict[str, Any]], opened_before: datetime) -> list[float]:
    """First public agent answer − opening, in seconds, for tickets opened before `opened_before`."""
    opened: dict[str, datetime] = {}
    first: dict[str, float] = {}
    for event in events:
        if event["type"] == "ticket.opened" and _at(event) < opened_before:
            opened[event["ticket_id"]] = _at(event)
        elif (
            event["type"] == "ticket.answered"
            and event["public"]
            and event["author"] == "agent"
            and event["ticket_id"] in opened
            and event["ticket_id"] not in first
        ):
            first[event["ticket_id"]] = (_at(event) - opened[event["ticket_id"]]).total_seconds()
    return list(first.values())


# --- determinism ---------------------------------------------------------------


def test_same_config_and_start_give_the_same_sequence(ten_thousand: list[dict[str, Any]]) -> None:
    again = _run(SimConfig(), count=10_000)
    assert again == ten_thousand
    assert json.dumps(again) == json.dumps(ten_thousand)


def test_another_seed_or_start_gives_another_sequence(ten_thousand: list[dict[str, Any]]) -> None:
    other_seed = _run(SimConfig(seed=8), count=1000)
    assert [e["type"] for e in other_seed] != [e["type"] for e in ten_thousand[:1000]]
    later = list(generate(SimConfig(), START + timedelta(days=1), count=10))
    assert not {e["event_id"] for e in later} & {e["event_id"] for e in ten_thousand}


def test_generation_does_not_touch_the_global_random(ten_thousand: list[dict[str, Any]]) -> None:
    import random

    random.seed(1)
    expected = random.random()
    random.seed(1)
    _run(SimConfig(seed=3), count=2000)
    assert random.random() == expected


# --- validity ------------------------------------------------------------------


def test_every_event_validates_against_the_schemas(
    ten_thousand: list[dict[str, Any]], two_weeks: list[dict[str, Any]]
) -> None:
    # Not skipped when missing: the simulator's output must match the project's own models.
    from schemas import validate_event_json

    core_only = _run(SimConfig(catalog=False, rate=0.05), count=3000)
    for event in [*ten_thousand, *two_weeks, *core_only]:
        model = validate_event_json(json.dumps(event))
        assert model.event_id == event["event_id"]
        assert model.type == event["type"]


def test_envelope_fields_and_formats(two_weeks: list[dict[str, Any]]) -> None:
    ids = [e["event_id"] for e in two_weeks]
    assert len(set(ids)) == len(ids)
    for event in two_weeks:
        assert event["occurred_at"].endswith("Z")
        assert len(event["occurred_at"]) == len("2025-03-03T08:00:00.000000Z")
        assert event["source"] in {"crm", "helpdesk", "surveys", "billing", "marketing"}
        if "amount" in event:
            assert isinstance(event["amount"], int | float) and event["amount"] >= 0
            assert Decimal(str(event["amount"])).as_tuple().exponent >= -2  # type: ignore[operator]
            assert event["currency"] in {"EUR", "USD"}
        if event["type"] in {"lead.created", "lead.qualified", "lead.lost", "marketing.spend"}:
            assert "customer_id" not in event
        elif event["type"] != "activity.logged":
            assert event["customer_id"]
        if event["type"] == "activity.logged":
            assert event["user_id"] in {f"u{i}" for i in range(1, 6)}  # 800 customers: 5 CRM users


def test_follow_ups_come_after_what_they_follow(two_weeks: list[dict[str, Any]]) -> None:
    seen: dict[tuple[str, str], datetime] = {}
    for event in two_weeks:
        t = _at(event)
        kind = event["type"]
        if kind == "order.placed" and "quote_id" in event:
            assert seen[("quote_id", event["quote_id"])] <= t
        if kind in OPENERS:
            seen[(OPENERS[kind], event[OPENERS[kind]])] = t
            continue
        for key in ("ticket_id", "deal_id", "lead_id", "order_id", "invoice_id"):
            if key in event and kind != "quote.sent":
                assert (key, event[key]) in seen, event
                assert seen[(key, event[key])] <= t
        if kind == "deal.won" and "deal_created_at" in event:
            assert _at(event, "deal_created_at") == seen[("deal_id", event["deal_id"])]
        if kind == "ticket.answered" and "ticket_opened_at" in event:
            assert _at(event, "ticket_opened_at") == seen[("ticket_id", event["ticket_id"])]
    issued = [e for e in two_weeks if e["type"] == "invoice.issued"]
    assert all(_at(e, "due_at") - _at(e) == timedelta(days=30) for e in issued)


# --- mix, time and bounds ----------------------------------------------------


def test_type_mix_of_ten_thousand_events(ten_thousand: list[dict[str, Any]]) -> None:
    counts = Counter(e["type"] for e in ten_thousand)
    families = {t.split(".")[0] for t in counts}
    assert {"lead", "deal", "ticket", "survey"} <= families
    tickets = sum(n for t, n in counts.items() if t.startswith("ticket."))
    assert tickets >= 1000
    assert sum(1 for e in ten_thousand if e["type"] == "customer.acquired" and _at(e) < START) == 500  # the base
    lead_sources = Counter(e.get("lead_source", "unknown") for e in ten_thousand if e["type"] == "lead.created")
    assert {"web", "referral", "ads", "event", "partner", "email", "social"} <= set(lead_sources)
    assert set(lead_sources) - {"web", "referral", "ads", "event", "partner", "email", "social"}  # unusual ones too
    priorities = Counter(e["priority"] for e in ten_thousand if e["type"] == "ticket.opened")
    total = sum(priorities.values())
    assert 0.5 < priorities["normal"] / total < 0.7
    assert 0.02 < priorities["urgent"] / total < 0.09


def test_every_type_appears_over_two_weeks(two_weeks: list[dict[str, Any]]) -> None:
    assert {e["type"] for e in two_weeks} == ALL_TYPES


def test_core_only_config_emits_only_core_types() -> None:
    events = _run(SimConfig(catalog=False, rate=0.05), duration_s=7 * 86400)
    assert {e["type"] for e in events} == CORE_TYPES


def test_events_are_in_time_order_and_within_bounds(
    ten_thousand: list[dict[str, Any]], two_weeks: list[dict[str, Any]]
) -> None:
    for events in (ten_thousand, two_weeks):
        times = [_at(e) for e in events]
        assert times == sorted(times)
        # The customer base comes first, dated at its sign-ups; everything else from START on.
        imported = [e for e in events if _at(e) < START]
        assert imported and {e["type"] for e in imported} == {"customer.acquired"}
        assert _at(imported[0]) >= START - timedelta(days=4 * 365)
        assert _at(events[len(imported)]) >= START
    assert len(ten_thousand) == 10_000
    assert _at(two_weeks[-1]) <= START + timedelta(days=14)
    assert _at(two_weeks[-1]) > START + timedelta(days=13)
    both = _run(SimConfig(), count=100, duration_s=3600)
    assert len(both) == 100
    short = _run(SimConfig(), count=10**9, duration_s=5.0)
    assert short and _at(short[-1]) <= START + timedelta(seconds=5)
    assert _run(SimConfig(), count=0) == []


def test_rate_and_seasonality(two_weeks: list[dict[str, Any]]) -> None:
    # Second week (the pipeline is full by then): the mean rate is near the configured 0.05/s.
    week2 = [e for e in two_weeks if _at(e) >= START + timedelta(days=7)]
    assert 0.8 < len(week2) / (7 * 86400) / 0.05 < 1.25
    by_slot: Counter[str] = Counter()
    for event in week2:
        if event["type"] in {"ticket.opened", "lead.created", "activity.logged"}:
            t = _at(event)
            if t.weekday() >= 5:
                by_slot["weekend"] += 1
            elif 9 <= t.hour < 17:
                by_slot["business"] += 1
            elif t.hour < 6:
                by_slot["night"] += 1
    # Per hour: 40 business hours, 30 weekday night hours, 48 weekend hours.
    assert by_slot["business"] / 40 > 5 * by_slot["night"] / 30
    assert by_slot["business"] / 40 > 3 * by_slot["weekend"] / 48


def test_weekly_profile_is_the_one_the_readme_states() -> None:
    # README: "2.2–2.9x in weekday business hours UTC, 0.15–0.2x at night, 0.15–0.55x on weekends".
    from stream.devtools.synthetic_crm.world import PROFILE as _PROFILE

    assert len(_PROFILE) == 168 and abs(sum(_PROFILE) / 168 - 1) < 1e-12
    business = [_PROFILE[d * 24 + h] for d in range(5) for h in range(9, 17)]
    night = [_PROFILE[d * 24 + h] for d in range(7) for h in range(7)]
    weekend = [_PROFILE[d * 24 + h] for d in (5, 6) for h in range(24)]
    assert min(business) >= 2.2 and max(business) <= 2.9
    assert min(night) >= 0.15 and max(night) <= 0.2
    assert min(weekend) >= 0.15 and max(weekend) <= 0.55


def test_funnel_and_deal_shapes(two_weeks: list[dict[str, Any]]) -> None:
    longer = _run(SimConfig(seed=5, customers=300, rate=0.02), duration_s=60 * 86400)
    counts = Counter(e["type"] for e in longer)
    created = counts["lead.created"]
    assert 0.32 < counts["lead.qualified"] / created < 0.48
    assert 0.14 < counts["lead.converted"] / created < 0.26
    closed = counts["deal.won"] + counts["deal.lost"]
    assert 0.22 < counts["deal.won"] / closed < 0.45
    won = [e for e in longer if e["type"] == "deal.won"]
    with_created = sum(1 for e in won if "deal_created_at" in e)
    assert 0.35 < with_created / len(won) < 0.65
    # Enterprise deals are bigger than small-business ones.
    segment = {e["customer_id"]: e["segment"] for e in longer if e["type"] == "customer.acquired"}
    sizes: dict[str, list[float]] = {"smb": [], "enterprise": []}
    for e in longer:
        if e["type"] == "deal.created" and segment.get(e["customer_id"]) in sizes:
            sizes[segment[e["customer_id"]]].append(e["amount"])
    assert statistics.median(sizes["enterprise"]) > 10 * statistics.median(sizes["smb"])


def test_first_responses_mostly_within_sla(two_weeks: list[dict[str, Any]]) -> None:
    opened = {e["ticket_id"]: e["priority"] for e in two_weeks if e["type"] == "ticket.opened"}
    first: dict[str, float] = {}
    opened_at = {e["ticket_id"]: _at(e) for e in two_weeks if e["type"] == "ticket.opened"}
    for e in two_weeks:
        if e["type"] == "ticket.answered" and e["public"] and e["author"] == "agent" and e["ticket_id"] not in first:
            first[e["ticket_id"]] = (_at(e) - opened_at[e["ticket_id"]]).total_seconds()
    breaches = sum(1 for t, d in first.items() if d > SLA_SECONDS[opened[t]])
    assert breaches / len(first) < 0.08
    authors = Counter((e["author"], e["public"]) for e in two_weeks if e["type"] == "ticket.answered")
    assert authors[("bot", True)] > 0 and authors[("agent", False)] > 0


# --- incidents -----------------------------------------------------------------


def test_churn_spike_raises_churn_and_lowers_nps() -> None:
    def run(incidents: frozenset[str]) -> list[dict[str, Any]]:
        return _run(SimConfig(seed=4, customers=2000, rate=0.01, incidents=incidents), duration_s=14 * 86400)

    base, spike = run(frozenset()), run(frozenset({"churn-spike"}))
    churned_base = sum(1 for e in base if e["type"] == "customer.churned")
    churned_spike = sum(1 for e in spike if e["type"] == "customer.churned")
    assert churned_base > 5
    assert 10 * 0.8 <= churned_spike / churned_base <= 10 * 1.2  # README: "churn ~10x" (within 20 %)
    assert len({e["customer_id"] for e in spike if e["type"] == "customer.churned"}) == churned_spike

    def nps(events: list[dict[str, Any]]) -> float:
        scores: list[int] = [e["score"] for e in events if e["type"] == "survey.submitted" and e["kind"] == "nps"]
        return 100 * (sum(s >= 9 for s in scores) - sum(s <= 6 for s in scores)) / len(scores)

    assert nps(base) > 20
    assert nps(spike) < nps(base) - 30


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="incident"):
        SimConfig(incidents=frozenset({"meteor"}))
    with pytest.raises(ValueError, match="rate"):
        SimConfig(rate=0)
    with pytest.raises(ValueError, match="aware"):
        list(generate(SimConfig(), datetime(2025, 1, 1), count=1))


# --- a company a support or sales lead would recognise -------------------------------------------


@pytest.fixture(scope="module")
def realistic_month() -> list[dict[str, Any]]:
    """The default world (no --rate): 3,000 customers over 30 days."""
    return _run(SimConfig(seed=5, customers=3000), duration_s=30 * 86400)


def test_customers_open_a_few_tickets_a_month(realistic_month: list[dict[str, Any]]) -> None:
    segment = {e["customer_id"]: e["segment"] for e in realistic_month if e["type"] == "customer.acquired"}
    tickets = Counter(e["customer_id"] for e in realistic_month if e["type"] == "ticket.opened")
    per_segment: dict[str, list[int]] = {"smb": [], "mid": [], "enterprise": []}
    for cid, seg in segment.items():
        per_segment[seg].append(tickets.get(cid, 0))
    means = {seg: statistics.mean(counts) for seg, counts in per_segment.items()}
    assert 0.7 < means["smb"] < 1.4 and 1.8 < means["mid"] < 3.3 and 3.5 < means["enterprise"] < 6.5, means
    assert max(tickets.values()) < 25  # nobody opens hundreds
    # About 400 tickets per agent and month.
    assert 300 < sum(tickets.values()) / agents_for(3000) < 500


def test_the_base_signed_up_before_the_start_and_churns_about_1_5_percent_a_month(
    realistic_month: list[dict[str, Any]],
) -> None:
    imported = [e for e in realistic_month if e["type"] == "customer.acquired" and _at(e) < START]
    assert len(imported) == 3000
    recent = sum(1 for e in imported if _at(e) > START - timedelta(days=30))
    assert recent < 0.05 * 3000  # acquisitions inside a 30-day window stay a few percent
    churned = sum(1 for e in realistic_month if e["type"] == "customer.churned")
    assert 0.008 < churned / 3000 < 0.03


def test_the_default_rate_is_the_natural_one_and_rate_scales_it() -> None:
    events = _run(SimConfig(seed=2, customers=2000), duration_s=60 * 86400)
    second_month = [e for e in events if _at(e) >= START + timedelta(days=30)]
    assert 0.8 < len(second_month) / (30 * 86400) / natural_rate(2000) < 1.25
    busier = _run(SimConfig(seed=2, customers=2000, rate=0.1), duration_s=20 * 86400)
    late = [e for e in busier if _at(e) >= START + timedelta(days=10)]
    assert 0.75 < len(late) / (10 * 86400) / 0.1 < 1.25


def test_slow_responses_multiply_every_first_answer_by_the_stated_factor() -> None:
    # The incident draws nothing more at random: the same tickets, each first answer 6x later.
    def first_answers(incidents: frozenset[str]) -> dict[str, float]:
        events = _run(SimConfig(seed=9, customers=2000, incidents=incidents), duration_s=3 * 86400)
        return dict(zip(*_first_answer_delays(events), strict=True))

    base, slow = first_answers(frozenset()), first_answers(frozenset({"slow-responses"}))
    both = sorted(set(base) & set(slow))
    assert len(both) > 300
    for ticket in both:
        assert slow[ticket] == pytest.approx(SLOW_RESPONSE_FACTOR * base[ticket], abs=1e-5)
    assert statistics.median(slow.values()) / statistics.median(base.values()) == pytest.approx(6.0, rel=0.1)


def test_an_incident_starts_when_told() -> None:
    begins = START + timedelta(days=2)
    config = SimConfig(seed=9, customers=2000, incidents=frozenset({"slow-responses"}), incident_start=begins)
    tickets, delays = _first_answer_delays(_run(config, duration_s=4 * 86400))
    base_tickets, base_delays = _first_answer_delays(_run(SimConfig(seed=9, customers=2000), duration_s=4 * 86400))
    base = dict(zip(base_tickets, base_delays, strict=True))
    slowed = [t for t, d in zip(tickets, delays, strict=True) if t in base and d > base[t] * 1.01]
    assert slowed
    opened = {e["ticket_id"]: _at(e) for e in _run(config, duration_s=4 * 86400) if e["type"] == "ticket.opened"}
    assert min(opened[t] for t in slowed) >= begins


def _first_answer_delays(events: list[dict[str, Any]]) -> tuple[list[str], list[float]]:
    """(ticket ids, seconds from opening to the first public agent answer), in answer order."""
    opened: dict[str, datetime] = {}
    ids: list[str] = []
    delays: list[float] = []
    for e in events:
        if e["type"] == "ticket.opened":
            opened[e["ticket_id"]] = _at(e)
        elif e["type"] == "ticket.answered" and e["public"] and e["author"] == "agent" and e["ticket_id"] in opened:
            ids.append(e["ticket_id"])
            delays.append((_at(e) - opened.pop(e["ticket_id"])).total_seconds())
    return ids, delays
