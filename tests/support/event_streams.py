"""Hypothesis strategies for CRM event streams over all 24 types (tests only).

A stream is a list of `Action`s, each one event: a type, an entity number (ids come from pools of
four, so the events of one ticket, deal, order, quote, invoice, lead, subscription or customer
meet, and some miss: an answer without its opening, an order citing a quote never sent), an age
(seconds before the example's NOW, from `AGES`) and a variant number that picks the optional
fields. Ages are `edge_free` (bench/reference_catalog.py) for `HEADROOM_S` under the default
settings: the figures are the same whenever the worker applies the events and the exporter reads
them within HEADROOM_S after NOW. They cover every window edge from both sides, future events
within the skew, late events, events older than the state TTL and order gaps beyond 365 days.

Each event gets its own microsecond (its position in the stream), so no two events of one entity
share a time: see `test_stream_property.py` on ties.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from bench.reference_catalog import DAY, edge_free
from schemas import EVENT_TYPES, TOPIC_FAMILY
from stream.events.decode import REASONS

__all__ = ["AGES", "BAD_REASONS", "HEADROOM_S", "Action", "actions", "build", "customer_of", "topic_family"]

HEADROOM_S = 120.0
AGES: tuple[float, ...] = (
    -240, -60, 30, 300, 1000, 1800, 3000, 3700, 7200, 14000, 20000, 50000, 90000, 200000,
    600000, 700000, 1500000, 2500000, 2700000, 5000000, 8000000, 40000000,
)  # fmt: skip
assert all(edge_free(a, HEADROOM_S) for a in AGES), "every age keeps clear of the default settings' edges"
DUE_AGES: tuple[float, ...] = (10 * DAY, 3600, -3600, -10 * DAY)  # a due date: past or future, never near now
assert all(edge_free(a, HEADROOM_S, due=True) for a in DUE_AGES)
POOL = 3

# The entity id each type is about; customer events are about their customer.
_ENTITY = {
    "lead.created": ("lead_id", "L"),
    "lead.converted": ("lead_id", "L"),
    "lead.qualified": ("lead_id", "L"),
    "lead.lost": ("lead_id", "L"),
    "deal.created": ("deal_id", "D"),
    "deal.won": ("deal_id", "D"),
    "deal.lost": ("deal_id", "D"),
    "deal.stage_changed": ("deal_id", "D"),
    "quote.sent": ("quote_id", "Q"),
    "ticket.opened": ("ticket_id", "T"),
    "ticket.answered": ("ticket_id", "T"),
    "ticket.resolved": ("ticket_id", "T"),
    "ticket.reopened": ("ticket_id", "T"),
    "survey.submitted": ("survey_id", "S"),
    "subscription.renewal_due": ("subscription_id", "B"),
    "subscription.renewed": ("subscription_id", "B"),
    "order.placed": ("order_id", "O"),
    "order.delivered": ("order_id", "O"),
    "invoice.issued": ("invoice_id", "I"),
    "invoice.paid": ("invoice_id", "I"),
    "marketing.spend": ("campaign_id", "M"),
    "activity.logged": ("user_id", "U"),
}
BAD_REASONS: tuple[str, ...] = REASONS  # a bad record of every reason the worker dead-letters


@dataclass(frozen=True)
class Action:
    """One event of a generated stream (see the module docstring)."""

    type: str
    entity: int
    age: float
    variant: int


actions = st.builds(
    Action,
    st.sampled_from(EVENT_TYPES),
    st.integers(0, POOL - 1),
    st.sampled_from(AGES),
    st.integers(0, 2**16),
)


def customer_of(action: Action) -> str:
    """Every entity number belongs to one customer, so a customer's tickets, surveys and orders meet."""
    return f"c{action.entity}"


def topic_family(event_type: str) -> str:
    return TOPIC_FAMILY[event_type]


def build(action: Action, index: int, now: datetime, tag: str) -> dict[str, Any]:
    """The event of `action` as a producer would publish it (a JSON-ready dict).

    `index` (the action's position) names the event and is the microsecond that keeps it apart;
    `tag` keeps event ids apart between examples.
    """
    rnd = random.Random(action.variant)

    def at(age: float, jitter: int = index) -> str:
        moment = now - timedelta(seconds=age) + timedelta(microseconds=jitter)
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")

    def maybe(*values: Any) -> Any:
        return rnd.choice(values)

    def money() -> dict[str, Any]:
        return {"amount": maybe(0, 1, 9.99, 250, 1000.5), "currency": maybe("EUR", "USD")}

    kind, n = action.type, action.entity
    e: dict[str, Any] = {"event_id": f"{tag}-{index}", "type": kind, "occurred_at": at(action.age)}
    if kind in _ENTITY:
        name, letter = _ENTITY[kind]
        e[name] = f"{letter}{n}"
    if kind not in ("lead.created", "lead.qualified", "lead.lost", "marketing.spend", "activity.logged"):
        e["customer_id"] = customer_of(action)
    if kind == "survey.submitted":
        e["survey_id"] = f"S{index}"
        e["kind"] = maybe("nps", "csat", "ces")
        e["score"] = rnd.randint(*{"nps": (0, 10), "csat": (1, 5), "ces": (1, 7)}[e["kind"]])
    elif kind == "lead.created":
        e["lead_source"] = maybe(None, "web", "ads", "tiktok", "email")
    elif kind == "lead.lost":
        e["reason"] = maybe(None, "no budget", "student", "spam")
    elif kind in ("deal.created", "deal.won", "quote.sent", "order.placed", "invoice.issued", "marketing.spend"):
        e.update(money())
    if kind == "deal.created":
        e["stage"] = maybe(None, "new", "qualification", "legal review")
    elif kind == "deal.won":
        e["deal_created_at"] = maybe(None, None, at(rnd.choice(AGES), index + 1_000_000))
    elif kind == "deal.lost":
        e["reason"] = maybe(None, "price")
    elif kind == "deal.stage_changed":
        e["stage"] = maybe("new", "proposal", "negotiation", "weird")
    elif kind == "quote.sent":
        e["deal_id"] = maybe(None, f"D{n}")
    elif kind == "ticket.opened":
        e["priority"] = maybe(None, "low", "normal", "high", "urgent")
        e["category"] = maybe(None, "question", "complaint", "cancellation")
        e["channel"] = maybe(None, "email")
    elif kind == "ticket.answered":
        e["public"] = maybe(True, True, False)
        e["author"] = maybe("agent", "agent", "bot")
        e["ticket_opened_at"] = maybe(None, None, at(rnd.choice(AGES), index + 1_000_000))
        e["priority"] = maybe(None, "high", "low")
    elif kind == "order.placed":
        e["quote_id"] = maybe(None, f"Q{rnd.randrange(POOL)}")
        e["promised_at"] = maybe(None, at(rnd.choice(AGES), index + 1_000_000))
    elif kind == "invoice.issued":
        e["due_at"] = at(rnd.choice(DUE_AGES), 0)
    elif kind == "customer.acquired":
        e["segment"] = maybe(None, "smb")
    elif kind == "customer.churned":
        e["reason"] = maybe(None, "price")
    elif kind == "marketing.spend":
        e["channel"] = maybe("ads", "email")
        e["purpose"] = maybe(None, "acquisition", "retention")
    elif kind == "activity.logged":
        e["kind"] = maybe("call", "email", "meeting", "note", "other")
    return {k: v for k, v in e.items() if v is not None}


def now_utc() -> datetime:
    """The example's NOW: the wall clock, to the microsecond."""
    return datetime.now(UTC)
