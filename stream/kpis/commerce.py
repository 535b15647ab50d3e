"""Commerce KPIs: orders, order value and interval, repeat purchases, deliveries, quotes, invoices, CLV.

Joined entities: `OrderState` (placement and delivery), `QuoteState` (a sent
quote and the first order carrying its id), `InvoiceState` (issue and payment)
and `OrderHistory` (one customer's recent orders, for the interval between them).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from stream.events.entities import Contribution, EntityKind, EntityState, PackedState, earlier
from stream.events.windows import to_us
from stream.kpis.customers import churn_ratio
from stream.kpis.event_counts import events_of
from stream.kpis.registry import (
    Current,
    DistinctCount,
    KpiConfig,
    Metric,
    Sample,
    SortedSet,
    Tally,
    TallyFamily,
    Totals,
    amount_micros,
    nonzero_amounts,
    one,
    ratio,
)

__all__ = [
    "BUYERS",
    "ENTITIES",
    "METRICS",
    "ORDER_HISTORY_US",
    "InvoiceState",
    "OrderHistory",
    "OrderState",
    "QuoteState",
    "sorted_set_queries",
]

ORDERS = TallyFamily("ordn")  # orders per currency, at placement
ORDER_AMOUNT = TallyFamily("orda")  # their amount (µ), per currency
QUOTE_ORDERS = Tally("qord")  # orders (at their time) carrying the id of a sent quote
ORDER_INTERVALS = Tally("oi_n")  # orders with a previous one within 365 days
ORDER_INTERVAL_TOTAL_US = Tally("oi_us")  # their summed intervals (µs)
DELIVERIES = Tally("dlv_n")  # deliveries of orders that had a promised_at
DELIVERIES_ON_TIME = Tally("dlv_ok")  # of those, at or before the promise
RECEIVABLES = TallyFamily("recv")  # current: amount (µ) of issued, unpaid invoices, per currency
OVERDUE = SortedSet("overdue", pruned=False)  # unpaid invoices scored by due_at (s); kept however old
BUYERS = DistinctCount("buyers")  # customers with an order in the window; count = their orders

_QUOTE_SENT = events_of("quote.sent")
_30D = "30d"


@dataclass
class InvoiceState(PackedState):
    """An invoice: issue (amount, currency, due date) and payment."""

    issued_us: int | None = None
    amount_micros: int | None = None
    currency: str | None = None
    due_us: int | None = None
    paid_us: int | None = None

    def unpaid(self) -> bool:
        return self.issued_us is not None and self.paid_us is None

    def persistent(self) -> bool:
        return self.unpaid()

    def absorb(self, event: Any, t_us: int) -> None:
        if event.type == "invoice.issued":
            if earlier(self.issued_us, t_us):
                self.issued_us = t_us
                self.amount_micros, self.currency = amount_micros(event.amount), event.currency
                self.due_us = to_us(event.due_at)
        elif event.type == "invoice.paid" and earlier(self.paid_us, t_us):
            self.paid_us = t_us

    def contribute(self, entity_id: str, config: KpiConfig) -> Contribution:
        """Receivables per currency and the overdue set (scored by due_at) while unpaid."""
        out = Contribution()
        if self.unpaid():
            assert self.currency is not None and self.due_us is not None
            if self.amount_micros:
                out.counters[RECEIVABLES.field(self.currency)] = self.amount_micros
            out.zmembers.add((OVERDUE.name, entity_id, self.due_us / 1e6))
        return out


@dataclass
class OrderState(PackedState):
    """An order: placement (customer, amount, promised delivery) and delivery."""

    placed_us: int | None = None
    customer_id: str | None = None
    amount_micros: int | None = None
    currency: str | None = None
    promised_us: int | None = None
    delivered_us: int | None = None

    def absorb(self, event: Any, t_us: int) -> None:
        if event.type == "order.placed":
            if earlier(self.placed_us, t_us):
                self.placed_us, self.customer_id = t_us, event.customer_id
                self.amount_micros, self.currency = amount_micros(event.amount), event.currency
                self.promised_us = None if event.promised_at is None else to_us(event.promised_at)
        elif event.type == "order.delivered" and earlier(self.delivered_us, t_us):
            self.delivered_us = t_us

    def contribute(self, entity_id: str, config: KpiConfig) -> Contribution:
        """Order count, amount and buyer at the placement; on-time delivery at the delivery."""
        out = Contribution()
        if self.placed_us is not None:
            assert self.currency is not None and self.customer_id is not None
            at = self.placed_us
            out.window.append((at, ORDERS.field(self.currency), 1))
            if self.amount_micros:
                out.window.append((at, ORDER_AMOUNT.field(self.currency), self.amount_micros))
            out.members.append((at, BUYERS.name, self.customer_id, 1))
            if self.delivered_us is not None and self.promised_us is not None:
                out.window.append((self.delivered_us, DELIVERIES.code, 1))
                if self.delivered_us <= self.promised_us:
                    out.window.append((self.delivered_us, DELIVERIES_ON_TIME.code, 1))
        return out


@dataclass
class QuoteState(PackedState):
    """A quote: when it was sent, and the earliest order that carried its id."""

    sent_us: int | None = None
    ordered_us: int | None = None

    def absorb(self, event: Any, t_us: int) -> None:
        if event.type == "quote.sent":
            if earlier(self.sent_us, t_us):
                self.sent_us = t_us
        elif event.type == "order.placed" and earlier(self.ordered_us, t_us):
            self.ordered_us = t_us

    def contribute(self, entity_id: str, config: KpiConfig) -> Contribution:
        """One quote-to-order at the order's time, once the quote is known as sent."""
        out = Contribution()
        if self.sent_us is not None and self.ordered_us is not None:
            out.window.append((self.ordered_us, QUOTE_ORDERS.code, 1))
        return out


ORDER_HISTORY_US = 365 * 86400 * 1_000_000
_HISTORY_KEEP_US = ORDER_HISTORY_US + 45 * 86400 * 1_000_000
_HISTORY_MAX = 200


@dataclass
class OrderHistory(EntityState):
    """One customer's recent orders (time, order id), for the interval between orders.

    Bounded: orders more than 410 days older than the customer's newest are
    dropped, and at most 200 kept (the newest). Both rules depend only on the
    set of orders seen, so arrival order still does not matter.
    """

    orders: tuple[tuple[int, str], ...] = ()

    def encode(self) -> str:
        return orjson.dumps(self.orders).decode() if self.orders else ""

    @classmethod
    def decode(cls, raw: str | None) -> OrderHistory:
        if not raw:
            return cls()
        return cls(tuple((int(t), str(o)) for t, o in orjson.loads(raw)))

    def copy(self) -> OrderHistory:
        return OrderHistory(self.orders)  # a tuple: shared, never modified

    def absorb(self, event: Any, t_us: int) -> None:
        """Merge an order placement into this history."""
        by_id = dict((o, t) for t, o in self.orders)
        if event.order_id not in by_id or t_us < by_id[event.order_id]:
            by_id[event.order_id] = t_us
        items = sorted((t, o) for o, t in by_id.items())
        newest = items[-1][0]
        self.orders = tuple([item for item in items if item[0] >= newest - _HISTORY_KEEP_US][-_HISTORY_MAX:])

    def contribute(self, entity_id: str, config: KpiConfig) -> Contribution:
        """For each order with a previous one within 365 days: the interval, at the order's time."""
        out = Contribution()
        for (t0, _), (t1, _) in itertools.pairwise(self.orders):
            gap = t1 - t0
            if gap <= ORDER_HISTORY_US:
                out.window += [(t1, ORDER_INTERVALS.code, 1), (t1, ORDER_INTERVAL_TOTAL_US.code, gap)]
        return out


ENTITIES = (
    EntityKind(
        "invoice", "i", frozenset({"invoice.issued", "invoice.paid"}), lambda e: e.invoice_id, InvoiceState.decode
    ),
    EntityKind("order", "o", frozenset({"order.placed", "order.delivered"}), lambda e: e.order_id, OrderState.decode),
    EntityKind(
        "quote",
        "q",
        frozenset({"quote.sent", "order.placed"}),
        lambda e: e.quote_id,  # an order without a quote_id touches no quote
        QuoteState.decode,
    ),
    EntityKind("order history", "oh", frozenset({"order.placed"}), lambda e: e.customer_id, OrderHistory.decode),
)


def sorted_set_queries(now_s: float, config: KpiConfig) -> dict[str, float]:
    """The overdue set read at scrape time: invoices due at or before now are overdue."""
    return {OVERDUE.name: now_s}


# --- read-outs ---------------------------------------------------------------------------------


def _quote_order(t: Totals) -> Iterator[Sample]:
    return ratio(QUOTE_ORDERS.of(t), _QUOTE_SENT.of(t))


def _order_interval(t: Totals) -> Iterator[Sample]:
    return ratio(ORDER_INTERVAL_TOTAL_US.of(t) * 1e-6, ORDER_INTERVALS.of(t))


def _on_time(t: Totals) -> Iterator[Sample]:
    return ratio(DELIVERIES_ON_TIME.of(t), DELIVERIES.of(t))


def _order_value(t: Totals) -> Iterator[Sample]:
    """Per currency with orders in the window (free orders: 0). Not per amount field: a field
    summed back to 0 by a retraction would make the series depend on how events were batched."""
    amounts = ORDER_AMOUNT.by_label(t)
    for cur, n in sorted(ORDERS.by_label(t).items()):
        if n:
            yield (cur,), amounts.get(cur, 0) * 1e-6 / n


def _repeat_purchase(t: Totals) -> Iterator[Sample]:
    return ratio(BUYERS.repeated(t), BUYERS.distinct(t))


def _clv(c: Current) -> Iterator[Sample]:
    t = c.windows.get(_30D)
    if t is None:
        return
    churn = churn_ratio(t)
    buyers = BUYERS.distinct(t)
    if not churn or not buyers:
        return
    per_customer = sum(ORDERS.by_label(t).values()) / buyers
    for cur, aov in _order_value(t):
        yield cur, aov * per_customer / churn


def _receivables(c: Current) -> Iterator[Sample]:
    return nonzero_amounts(RECEIVABLES.by_label(c.counters))


def _overdue(c: Current) -> Iterator[Sample]:
    return one(c.zsets[OVERDUE.name].at_or_below)


METRICS: tuple[Metric, ...] = (
    Metric(
        "crm_quote_order_ratio",
        "Orders in the window carrying the quote_id of a sent quote / quote.sent count in the window.",
        (),
        _quote_order,
        unit="ratio",
        domain="commerce",
    ),
    Metric(
        "crm_order_interval_seconds_average",
        "Mean time between an order in the window and the same customer's previous order, over orders "
        "that have one within the preceding 365 days.",
        (),
        _order_interval,
        unit="seconds",
        domain="commerce",
    ),
    Metric(
        "crm_delivery_on_time_ratio",
        "order.delivered in the window at or before the order's promised_at / deliveries in the window "
        "whose order had a promised_at.",
        (),
        _on_time,
        unit="ratio",
        domain="commerce",
    ),
    Metric(
        "crm_order_value_average",
        "Order amount / order count, per currency.",
        ("currency",),
        _order_value,
        unit="amount",
        domain="commerce",
    ),
    Metric(
        "crm_repeat_purchase_ratio",
        "Customers with >= 2 orders in the window / customers with >= 1 (exact distinct counts).",
        (),
        _repeat_purchase,
        unit="ratio",
        domain="commerce",
    ),
    Metric(
        "crm_customer_lifetime_value",
        "Over the 30d window: average order value x (orders / ordering customers) x (1 / 30d churn ratio), "
        "per currency; absent when churn is 0.",
        ("currency",),
        _clv,
        unit="amount",
        domain="commerce",
        windowed=False,
    ),
    Metric(
        "crm_receivables_outstanding_amount",
        "Invoices issued and not yet paid, now, per currency.",
        ("currency",),
        _receivables,
        unit="amount",
        domain="commerce",
        windowed=False,
    ),
    Metric(
        "crm_invoices_overdue",
        "Unpaid invoices whose due_at has passed, now.",
        (),
        _overdue,
        unit="count",
        domain="commerce",
        windowed=False,
    ),
)
