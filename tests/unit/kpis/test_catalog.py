"""Full-catalog joins and formulas: order independence, churn and net loss, churn-risk points (pure)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import event_adapter
from stream.events.fold import FoldMemo
from stream.events.windows import to_us
from stream.kpis import METRICS, Current, Totals, churn_risk
from stream.kpis.commerce import OrderHistory
from stream.kpis.customers import RiskState
from stream.kpis.sales import DealState
from stream.kpis.support import TicketState
from tests.support.config import fold_context, kpi_config
from tests.support.memory_store import MemoryStore

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CONFIG = kpi_config()
CTX = fold_context(NOW.timestamp(), [3600, 86400], key_prefix="p")
BY_NAME = {m.name: m for m in METRICS}


class Memory(MemoryStore):
    """The catalog's view of the in-memory store: what the exporter's read returns (MemoryStore.snapshot)."""

    def __init__(self, memo: FoldMemo | None = None) -> None:
        super().__init__(CTX, memo)

    def window(self, label: str) -> Totals:
        return self.snapshot(CONFIG).windows[label]

    def current(self) -> Current:
        return self.snapshot(CONFIG).current

    def figures(self) -> dict[tuple[str, str, tuple[str, ...]], float]:
        """Every full-catalog (not core) series this state exports."""
        out = {}
        cur = self.current()
        for m in METRICS:
            if m.core:
                continue
            if m.windowed:
                for label in ("1h", "24h"):
                    for labels, v in m.compute(self.window(label)):
                        out[(m.name, label, labels)] = v
            else:
                for labels, v in m.compute(cur):
                    out[(m.name, "", labels)] = v
        return out


_n = itertools.count()


def _nonzero(values: Mapping[str, int]) -> dict[str, int]:
    return {k: v for k, v in values.items() if v}


def ev(event_type: str, minutes_ago: float, /, **fields: Any) -> Any:
    when = (NOW - timedelta(minutes=minutes_ago)).isoformat()
    return event_adapter.validate_python(
        {"event_id": f"e{next(_n)}", "type": event_type, "occurred_at": when, **fields}
    )


def iso(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat()


EUR = {"currency": "EUR"}
SCENARIO = [
    ev("ticket.opened", 300, ticket_id="a", customer_id="c1", priority="high", category="complaint"),
    ev("ticket.answered", 200, ticket_id="a", customer_id="c1"),
    ev("ticket.resolved", 100, ticket_id="a", customer_id="c1"),
    ev("ticket.reopened", 50, ticket_id="a", customer_id="c1"),
    ev("ticket.resolved", 20, ticket_id="a", customer_id="c1"),
    ev("ticket.opened", 40, ticket_id="b", customer_id="c1", category="cancellation"),
    ev("ticket.resolved", 30, ticket_id="b", customer_id="c1"),
    ev("ticket.reopened", 10, ticket_id="b", customer_id="c1"),
    ev("survey.submitted", 30, survey_id="s", customer_id="c2", kind="nps", score=2),
    ev("survey.submitted", 20, survey_id="s", customer_id="c2", kind="csat", score=1),
    ev("customer.acquired", 600, customer_id="c1"),
    ev("customer.acquired", 30, customer_id="c3"),
    ev("customer.churned", 10, customer_id="c3"),
    ev("deal.created", 500, deal_id="d1", customer_id="c1", amount=100, **EUR),
    ev("deal.stage_changed", 400, deal_id="d1", customer_id="c1", stage="proposal"),
    ev("deal.stage_changed", 450, deal_id="d1", customer_id="c1", stage="negotiation"),
    ev("deal.created", 50, deal_id="d2", customer_id="c1", amount=7, **EUR),
    ev("deal.won", 5, deal_id="d2", customer_id="c1", amount=7, **EUR),
    ev("deal.created", 45, deal_id="d3", customer_id="c2", amount=9, currency="USD", stage="weird"),
    ev("deal.lost", 4, deal_id="d3", customer_id="c2"),
    ev("quote.sent", 90, quote_id="q1", customer_id="c1", amount=5, **EUR),
    ev("order.placed", 80, order_id="o1", customer_id="c1", amount=5, **EUR, quote_id="q1", promised_at=iso(60)),
    ev("order.delivered", 70, order_id="o1", customer_id="c1"),
    ev("order.placed", 30, order_id="o2", customer_id="c1", amount=3, **EUR, promised_at=iso(20)),
    ev("order.delivered", 10, order_id="o2", customer_id="c1"),
    ev("order.placed", 20, order_id="o3", customer_id="c2", amount=4, currency="USD"),
    # Placed twice: the earlier placement (a free order) wins, whichever batch brings it.
    ev("order.placed", 15, order_id="o4", customer_id="c4", amount=5, currency="GBP"),
    ev("order.placed", 25, order_id="o4", customer_id="c4", amount=0, currency="GBP"),
    ev("invoice.issued", 900, invoice_id="i1", customer_id="c1", amount=10, **EUR, due_at=iso(100)),
    ev("invoice.issued", 900, invoice_id="i2", customer_id="c1", amount=20, **EUR, due_at=iso(-100)),
    ev("invoice.issued", 900, invoice_id="i3", customer_id="c1", amount=40, **EUR, due_at=iso(100)),
    ev("invoice.paid", 5, invoice_id="i3", customer_id="c1"),
    ev("activity.logged", 5, user_id="u1", kind="call"),
    ev("activity.logged", 6, user_id="u1", kind="email"),
    ev("activity.logged", 600, user_id="u2", kind="note"),
    ev("marketing.spend", 5, campaign_id="m", channel="ads", amount=30, **EUR),
    ev("lead.lost", 5, lead_id="l", reason="price"),
]


def test_scenario_figures() -> None:
    r = Memory()
    r.run(SCENARIO)
    got = r.figures()
    assert got[("crm_tickets_open", "", ("high",))] == 0  # a: last resolution after the reopen
    assert got[("crm_tickets_open", "", ("normal",))] == 1  # b: reopened
    assert got[("crm_ticket_reopen_ratio", "24h", ())] == 2 / 3
    assert got[("crm_deals_open", "", ("proposal",))] == 1  # latest stage of d1
    assert ("crm_deals_open", "", ("other",)) not in got  # d3 ("weird") was lost
    assert got[("crm_pipeline_open_amount", "", ("EUR",))] == 100
    assert ("crm_pipeline_open_amount", "", ("USD",)) not in got
    assert got[("crm_customers_active", "", ())] == 1
    assert got[("crm_customer_churn_ratio", "1h", ())] == 1 / 1  # start = 1 - 1 + 1
    assert got[("crm_receivables_outstanding_amount", "", ("EUR",))] == 30
    assert got[("crm_invoices_overdue", "", ())] == 1
    assert got[("crm_quote_order_ratio", "24h", ())] == 1
    assert got[("crm_delivery_on_time_ratio", "24h", ())] == 1 / 2
    assert got[("crm_order_interval_seconds_average", "1h", ())] == 50 * 60
    assert got[("crm_repeat_purchase_ratio", "24h", ())] == 1 / 3
    assert got[("crm_order_value_average", "1h", ("GBP",))] == 0  # one order, free
    assert got[("crm_crm_users_active", "1h", ())] == 1 and got[("crm_crm_users_active", "24h", ())] == 2
    assert got[("crm_customers_at_risk", "", ())] == 2  # c1: complaint 2 + cancellation 3; c2: 2 + 2
    assert got[("crm_leads_lost", "1h", ("other",))] == 1


@settings(max_examples=80, deadline=None)
@given(st.permutations(SCENARIO), st.lists(st.integers(min_value=1, max_value=len(SCENARIO)), max_size=6))
def test_order_and_batching_do_not_change_catalog_figures(order: list[Any], cuts: list[int]) -> None:
    reference = Memory()
    reference.run(SCENARIO)
    r = Memory(FoldMemo())  # batched as the worker does, reusing decoded states
    for lo, hi in itertools.pairwise(sorted({0, len(order), *cuts})):
        r.run(order[lo:hi])
    assert r.figures() == reference.figures()
    for label in ("1h", "24h"):  # the figures, not the fields summed back to 0 (they depend on batching)
        assert _nonzero(r.window(label)) == _nonzero(reference.window(label))
    assert _nonzero(r.counters) == _nonzero(reference.counters)
    assert {z: m for z, m in r.zsets.items() if m} == {z: m for z, m in reference.zsets.items() if m}


customer = st.tuples(
    st.integers(min_value=1, max_value=3000),  # acquired, minutes ago
    st.one_of(st.none(), st.integers(min_value=0, max_value=3000)),  # churned, minutes after acquisition
)


@settings(max_examples=80, deadline=None)
@given(st.lists(customer, min_size=1, max_size=30))
def test_churn_and_net_loss_formulas(customers: list[tuple[int, int | None]]) -> None:
    events = []
    for i, (acq, after) in enumerate(customers):
        events.append(ev("customer.acquired", acq, customer_id=f"c{i}"))
        if after is not None and acq - after >= 0:
            events.append(ev("customer.churned", acq - after, customer_id=f"c{i}"))
    r = Memory()
    r.run(events)
    churn_at = {i: acq - after for i, (acq, after) in enumerate(customers) if after is not None and acq - after >= 0}
    for label, minutes in (("1h", 60), ("24h", 1440)):
        # Customers active at the window's start, directly: acquired before it, not churned before it.
        start = sum(
            1 for i, (acq, _) in enumerate(customers) if acq > minutes and not (i in churn_at and churn_at[i] > minutes)
        )
        now = sum(1 for i in range(len(customers)) if i not in churn_at)
        churned = sum(1 for m in churn_at.values() if m <= minutes)
        t = r.window(label)
        churn = dict(BY_NAME["crm_customer_churn_ratio"].compute(t))
        loss = dict(BY_NAME["crm_customer_net_loss_ratio"].compute(t))
        if start:
            assert churn == {(): churned / start}
            assert loss[()] == (start - now) / start
        else:
            assert churn == {} and loss == {}


def test_risk_points_and_expiry() -> None:
    day = 86400 * 10**6
    now = to_us(NOW)
    items = ((now - 29 * day, "C", "t:1"), (now - day, "N", "s:1"))
    assert churn_risk.points(items, now) == 4
    assert churn_risk.expiry_us(items, 4) == now + day  # the complaint leaves the 30 days
    assert churn_risk.expiry_us(items, 5) is None
    tickets = [(now - k * day, "T", f"t:{k}") for k in range(5)]
    assert churn_risk.points(tickets, now) == 2
    assert churn_risk.reasons([*tickets, *items], now) == [
        {"reason": "ticket beyond the third", "count": 3, "points": 3},  # 6 tickets with the complaint
        {"reason": "NPS 0-6", "count": 1, "points": 2},
        {"reason": "complaint ticket", "count": 1, "points": 2},
    ]
    # The state keeps only the last 30 days before its newest item, whatever the arrival order.
    a = RiskState().merge(ev("ticket.opened", 40 * 1440, ticket_id="x", customer_id="c"), now - 40 * day)
    b = a.merge(ev("ticket.opened", 0, ticket_id="y", customer_id="c"), now)
    assert [k for _, _, k in b.items] == ["t:y"]
    assert RiskState.decode(b.encode()) == b


def _reference_risk_items(seen: list[tuple[int, str, str]]) -> tuple[churn_risk.Item, ...]:
    """RiskState's rule spelled out: earliest (time, code) per key, then the 30 days before the newest."""
    best: dict[str, tuple[int, str]] = {}
    for t, code, key in seen:
        if key not in best or (t, code) < best[key]:
            best[key] = (t, code)
    items = sorted((t, c, k) for k, (t, c) in best.items())
    return tuple(i for i in items if i[0] > items[-1][0] - churn_risk.WINDOW_US) if items else ()


risk_event = st.tuples(
    st.integers(min_value=0, max_value=12),  # ticket id; repeats are copies with another category
    st.sampled_from(["question", "complaint", "cancellation"]),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(risk_event, max_size=40),
    # Each ticket has one opening day; days around the 30-day edge are the interesting ones.
    st.lists(st.sampled_from([0, 1, 29, 30, 31, 59, 60, 61, 90]), min_size=13, max_size=13),
)
def test_risk_state_keeps_the_earliest_item_per_key_within_30_days(
    tickets: list[tuple[int, str]], opened_day: list[int]
) -> None:
    # (See RiskState on a key seen again at another time after its item was dropped.)
    state, seen = RiskState(), []
    for tid, category in tickets:
        e = ev("ticket.opened", opened_day[tid] * 1440, ticket_id=f"t{tid}", customer_id="c", category=category)
        t = to_us(e.occurred_at)
        state = state.merge(e, t)
        seen.append((t, churn_risk.item_of(e)[0], f"t:t{tid}"))
    # Items older than the newest minus 30 days were dropped on the way; the rule only depends on the set.
    assert state.items == _reference_risk_items(seen)


def test_states_round_trip_with_separators() -> None:
    d = DealState(1, None, None, None, 2, "a|b%7C", 5, "EUR")
    assert DealState.decode(d.encode()) == d
    t = TicketState(1, "high", None, None, 5, 6, 7, 8)
    assert TicketState.decode(t.encode()) == t
    # States written before the catalog (fewer fields) still decode.
    assert TicketState.decode("1|high|||5") == TicketState(1, "high", None, None, 5)
    h = OrderHistory(((1, "o|1"), (2, "o2")))
    assert OrderHistory.decode(h.encode()) == h
