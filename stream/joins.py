"""Stateful joins as order-independent entity states (pure, no I/O).

An entity (a ticket, a deal) keeps a small state in Redis. Each event merges
into it with commutative rules (earliest opening, earliest public agent answer,
…), so the state — and everything derived from it — does not depend on the
order events arrive in. What an entity adds to the KPIs is a function of its
state (`contribute`); when an event changes the state, the batch applies
contribute(new) − contribute(old). Out-of-order arrivals therefore end in the
same figures as in-order ones: a response time becomes known when the opening
arrives after the answer, and an earlier answer arriving late replaces a later
one as the first.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol, TypeVar

import orjson

from stream import churn_risk, sketch
from stream.business_hours import business_us
from stream.kpis import DEFAULT_CONFIG, Field, KpiConfig, amount_micros

__all__ = [
    "ENTITIES",
    "KINDS_BY_TYPE",
    "Contribution",
    "CustomerState",
    "DealState",
    "EntityKind",
    "InvoiceState",
    "OrderHistory",
    "OrderState",
    "QuoteState",
    "RiskState",
    "TicketState",
    "to_us",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact, no float rounding)."""
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass
class Contribution:
    """What one entity state adds: windowed counters at event times, and current state."""

    window: list[tuple[int, str, int]] = field(default_factory=list)  # (t_us, field, delta)
    members: list[tuple[int, str, str, int]] = field(default_factory=list)  # (t_us, distinct name, member, delta)
    counters: dict[str, int] = field(default_factory=dict)  # non-windowed counters
    zmembers: set[tuple[str, str, float]] = field(default_factory=set)  # (zset, member, score)


S = TypeVar("S", bound="_State")


class _State:
    """Compact '|'-joined encoding of a dataclass of optional ints and strings."""

    _ints: ClassVar[frozenset[str]] = frozenset()

    def encode(self) -> str:
        # Runs for every entity a batch touches: _quote only for text that needs escaping.
        parts: list[str] = []
        for v in self.__dict__.values():
            if v is None:
                parts.append("")
            elif type(v) is int:
                parts.append(str(v))
            elif "%" in v or "|" in v:
                parts.append(_quote(v))
            else:
                parts.append(v)
        return "|".join(parts)

    @classmethod
    def decode(cls: type[S], raw: str | None) -> S:
        if not raw:
            return cls()
        new = cls()
        ints = cls._ints
        values = new.__dict__
        for name, part in zip(_names(cls), raw.split("|"), strict=False):
            if part:
                values[name] = int(part) if name in ints else _unquote(part)
        return new

    def copy(self: S) -> S:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def persistent(self) -> bool:
        """True when the state must outlive the state TTL (it holds open "current" figures)."""
        return False


_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def _quote(value: object) -> str:
    # Free-text parts (ids, labels) may hold the separator: escape it and the escape.
    if value is None:
        return ""
    if type(value) is int:
        return str(value)
    text = str(value)
    if "%" in text or "|" in text:
        text = text.replace("%", "%25").replace("|", "%7C")
    return text


def _unquote(part: str) -> str:
    return part.replace("%7C", "|").replace("%25", "%") if "%" in part else part


def _earlier(current: int | None, candidate: int) -> bool:
    return current is None or candidate < current


@dataclass
class TicketState(_State):
    """A ticket: its opening, a hinted opening from answers, and its first response."""

    opened_us: int | None = None
    priority: str | None = None
    hint_us: int | None = None
    hint_priority: str | None = None
    answered_us: int | None = None
    resolved_us: int | None = None  # first resolution
    last_resolved_us: int | None = None
    last_reopened_us: int | None = None

    _ints: ClassVar[frozenset[str]] = frozenset(
        {"opened_us", "hint_us", "answered_us", "resolved_us", "last_resolved_us", "last_reopened_us"}
    )

    def in_backlog(self) -> bool:
        """Opened, and not resolved unless reopened at or after its latest resolution."""
        if self.opened_us is None:
            return False
        if self.last_resolved_us is None:
            return True
        return self.last_reopened_us is not None and self.last_reopened_us >= self.last_resolved_us

    def persistent(self) -> bool:
        return self.in_backlog()

    def merge(self, event: Any, t_us: int) -> TicketState:
        """The state after `event` (ticket.opened / ticket.answered); self is unchanged."""
        new = self.copy()
        if event.type == "ticket.opened":
            if _earlier(new.opened_us, t_us):
                new.opened_us, new.priority = t_us, event.priority
        elif event.type == "ticket.answered":
            if event.ticket_opened_at is not None:
                hint = to_us(event.ticket_opened_at)
                if _earlier(new.hint_us, hint):
                    new.hint_us, new.hint_priority = hint, event.priority
            # SPEC §3.2: only a public answer by an agent is a response.
            if event.public and event.author == "agent" and _earlier(new.answered_us, t_us):
                new.answered_us = t_us
        elif event.type == "ticket.resolved":
            if _earlier(new.resolved_us, t_us):
                new.resolved_us = t_us
            if new.last_resolved_us is None or t_us > new.last_resolved_us:
                new.last_resolved_us = t_us
        elif event.type == "ticket.reopened" and (new.last_reopened_us is None or t_us > new.last_reopened_us):
            new.last_reopened_us = t_us
        return new

    def contribute(self, ctx: JoinContext) -> Contribution:
        """First-response samples at the first answer's time; the awaiting-response set."""
        out = Contribution()
        opening = self.opened_us if self.opened_us is not None else self.hint_us
        if self.answered_us is not None and opening is not None:
            # An answer stamped before its opening (producer clocks) counts as instant.
            rt_us = max(0, self.answered_us - opening)
            prio = self.priority or self.hint_priority or "normal"
            at = self.answered_us
            out.window += [
                (at, Field.FR_N, 1),
                (at, Field.FR_US, rt_us),
                (at, Field.fr_bucket(sketch.bucket_index(rt_us / 1e6)), 1),
                (at, Field.fr_priority(prio), 1),
            ]
            if rt_us > ctx.sla[prio] * 1_000_000:
                out.window.append((at, Field.fr_breach(prio), 1))
            business = business_us(opening, self.answered_us, ctx.config.schedule)
            out.window.append((at, Field.business_fr_bucket(sketch.bucket_index(business / 1e6)), 1))
        if self.opened_us is not None and self.answered_us is None:
            out.zmembers.add((Field.awaiting(self.priority or "normal"), ctx.entity_id, self.opened_us / 1e6))
        if self.resolved_us is not None and opening is not None:
            resolution = max(0, self.resolved_us - opening)
            out.window.append((self.resolved_us, Field.resolution_bucket(sketch.bucket_index(resolution / 1e6)), 1))
        if self.in_backlog():
            out.counters[Field.tickets_open(self.priority or "normal")] = 1
        return out


@dataclass
class DealState(_State):
    """A deal: its stored creation, the creation time a won event carried, its win."""

    created_us: int | None = None
    created_hint_us: int | None = None
    won_us: int | None = None
    lost_us: int | None = None
    stage_us: int | None = None  # time of the latest stage seen
    stage: str | None = None
    amount_micros: int | None = None  # of the (earliest) deal.created
    currency: str | None = None

    _ints: ClassVar[frozenset[str]] = frozenset(
        {"created_us", "created_hint_us", "won_us", "lost_us", "stage_us", "amount_micros"}
    )

    def is_open(self) -> bool:
        return self.created_us is not None and self.won_us is None and self.lost_us is None

    def persistent(self) -> bool:
        return self.is_open()

    def _see_stage(self, t_us: int, stage: str) -> None:
        # Latest stage wins; equal times break on the name, so arrival order never matters.
        if self.stage_us is None or (t_us, stage) > (self.stage_us, self.stage or ""):
            self.stage_us, self.stage = t_us, stage

    def merge(self, event: Any, t_us: int) -> DealState:
        """The state after a deal event; self is unchanged."""
        new = self.copy()
        if event.type == "deal.created":
            if _earlier(new.created_us, t_us):
                new.created_us = t_us
                amount = getattr(event, "amount", None)
                new.amount_micros = None if amount is None else amount_micros(amount)
                new.currency = getattr(event, "currency", None)
            new._see_stage(t_us, getattr(event, "stage", "new"))
        elif event.type == "deal.stage_changed":
            new._see_stage(t_us, event.stage)
        elif event.type == "deal.lost":
            if _earlier(new.lost_us, t_us):
                new.lost_us = t_us
        elif event.type == "deal.won":
            if _earlier(new.won_us, t_us):
                new.won_us = t_us
                if event.deal_created_at is not None:
                    new.created_hint_us = to_us(event.deal_created_at)
            elif new.created_hint_us is None and event.deal_created_at is not None:
                new.created_hint_us = to_us(event.deal_created_at)
        return new

    def contribute(self, ctx: JoinContext) -> Contribution:
        """One sales-cycle sample at the win, when the creation time is known."""
        out = Contribution()
        created = self.created_hint_us if self.created_hint_us is not None else self.created_us
        if self.won_us is not None and created is not None:
            out.window += [
                (self.won_us, Field.CYCLE_N, 1),
                (self.won_us, Field.CYCLE_US, self.won_us - created),
            ]
        if self.is_open():
            stage = self.stage if self.stage in ctx.config.stages else "other"
            out.counters[Field.deals_open(stage)] = 1
            if self.currency is not None and self.amount_micros:
                out.counters[Field.pipeline(self.currency)] = self.amount_micros
        return out


@dataclass
class CustomerState(_State):
    """A customer: earliest acquisition and earliest churn."""

    acquired_us: int | None = None
    churned_us: int | None = None

    _ints: ClassVar[frozenset[str]] = frozenset({"acquired_us", "churned_us"})

    def merge(self, event: Any, t_us: int) -> CustomerState:
        new = self.copy()
        if event.type == "customer.acquired":
            if _earlier(new.acquired_us, t_us):
                new.acquired_us = t_us
        elif event.type == "customer.churned" and _earlier(new.churned_us, t_us):
            new.churned_us = t_us
        return new

    def contribute(self, ctx: JoinContext) -> Contribution:
        """Acquired / churned customers, in the window of each and in the current totals."""
        out = Contribution()
        if self.acquired_us is not None:
            out.window.append((self.acquired_us, Field.CUSTOMERS_ACQUIRED, 1))
            out.counters[Field.CUR_ACQUIRED] = 1
        if self.churned_us is not None:
            out.window.append((self.churned_us, Field.CUSTOMERS_CHURNED, 1))
            out.counters[Field.CUR_CHURNED] = 1
        return out


@dataclass
class InvoiceState(_State):
    """An invoice: issue (amount, currency, due date) and payment."""

    issued_us: int | None = None
    amount_micros: int | None = None
    currency: str | None = None
    due_us: int | None = None
    paid_us: int | None = None

    _ints: ClassVar[frozenset[str]] = frozenset({"issued_us", "amount_micros", "due_us", "paid_us"})

    def unpaid(self) -> bool:
        return self.issued_us is not None and self.paid_us is None

    def persistent(self) -> bool:
        return self.unpaid()

    def merge(self, event: Any, t_us: int) -> InvoiceState:
        new = self.copy()
        if event.type == "invoice.issued":
            if _earlier(new.issued_us, t_us):
                new.issued_us = t_us
                new.amount_micros, new.currency = amount_micros(event.amount), event.currency
                new.due_us = to_us(event.due_at)
        elif event.type == "invoice.paid" and _earlier(new.paid_us, t_us):
            new.paid_us = t_us
        return new

    def contribute(self, ctx: JoinContext) -> Contribution:
        """Receivables per currency and the overdue set (scored by due_at) while unpaid."""
        out = Contribution()
        if self.unpaid():
            assert self.currency is not None and self.due_us is not None
            if self.amount_micros:
                out.counters[Field.receivables(self.currency)] = self.amount_micros
            out.zmembers.add((Field.OVERDUE, ctx.entity_id, self.due_us / 1e6))
        return out


@dataclass
class OrderState(_State):
    """An order: placement (customer, amount, promised delivery) and delivery."""

    placed_us: int | None = None
    customer_id: str | None = None
    amount_micros: int | None = None
    currency: str | None = None
    promised_us: int | None = None
    delivered_us: int | None = None

    _ints: ClassVar[frozenset[str]] = frozenset({"placed_us", "amount_micros", "promised_us", "delivered_us"})

    def merge(self, event: Any, t_us: int) -> OrderState:
        new = self.copy()
        if event.type == "order.placed":
            if _earlier(new.placed_us, t_us):
                new.placed_us, new.customer_id = t_us, event.customer_id
                new.amount_micros, new.currency = amount_micros(event.amount), event.currency
                new.promised_us = None if event.promised_at is None else to_us(event.promised_at)
        elif event.type == "order.delivered" and _earlier(new.delivered_us, t_us):
            new.delivered_us = t_us
        return new

    def contribute(self, ctx: JoinContext) -> Contribution:
        """Order count, amount and buyer at the placement; on-time delivery at the delivery."""
        out = Contribution()
        if self.placed_us is not None:
            assert self.currency is not None and self.customer_id is not None
            at = self.placed_us
            out.window.append((at, Field.orders(self.currency), 1))
            if self.amount_micros:
                out.window.append((at, Field.order_amount(self.currency), self.amount_micros))
            out.members.append((at, Field.BUYERS, self.customer_id, 1))
            if self.delivered_us is not None and self.promised_us is not None:
                out.window.append((self.delivered_us, Field.DELIVERIES, 1))
                if self.delivered_us <= self.promised_us:
                    out.window.append((self.delivered_us, Field.DELIVERIES_ON_TIME, 1))
        return out


@dataclass
class QuoteState(_State):
    """A quote: when it was sent, and the earliest order that carried its id."""

    sent_us: int | None = None
    ordered_us: int | None = None

    _ints: ClassVar[frozenset[str]] = frozenset({"sent_us", "ordered_us"})

    def merge(self, event: Any, t_us: int) -> QuoteState:
        new = self.copy()
        if event.type == "quote.sent":
            if _earlier(new.sent_us, t_us):
                new.sent_us = t_us
        elif event.type == "order.placed" and _earlier(new.ordered_us, t_us):
            new.ordered_us = t_us
        return new

    def contribute(self, ctx: JoinContext) -> Contribution:
        """One quote-to-order at the order's time, once the quote is known as sent."""
        out = Contribution()
        if self.sent_us is not None and self.ordered_us is not None:
            out.window.append((self.ordered_us, Field.QUOTE_ORDERS, 1))
        return out


ORDER_HISTORY_US = 365 * 86400 * 1_000_000
_HISTORY_KEEP_US = ORDER_HISTORY_US + 45 * 86400 * 1_000_000
_HISTORY_MAX = 200


@dataclass
class OrderHistory:
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

    def persistent(self) -> bool:
        return False

    def merge(self, event: Any, t_us: int) -> OrderHistory:
        by_id = dict((o, t) for t, o in self.orders)
        if event.order_id not in by_id or t_us < by_id[event.order_id]:
            by_id[event.order_id] = t_us
        items = sorted((t, o) for o, t in by_id.items())
        newest = items[-1][0]
        kept = [item for item in items if item[0] >= newest - _HISTORY_KEEP_US][-_HISTORY_MAX:]
        return OrderHistory(tuple(kept))

    def contribute(self, ctx: JoinContext) -> Contribution:
        """For each order with a previous one within 365 days: the interval, at the order's time."""
        out = Contribution()
        for (t0, _), (t1, _) in itertools.pairwise(self.orders):
            gap = t1 - t0
            if gap <= ORDER_HISTORY_US:
                out.window += [(t1, Field.INTERVAL_N, 1), (t1, Field.INTERVAL_US, gap)]
        return out


_ITEM_KEY = operator.itemgetter(2)
_AFTER_ANY_CODE = "\U0010ffff"  # sorts after every item code, so (t, this) follows every item at t


@dataclass
class RiskState:
    """One customer's churn-risk items of the last 30 days (before their newest) and churn.

    Items are keyed (a ticket by its id, a survey answer by its event id); a
    repeated key keeps its earliest time. Items 30 days or more older than the
    newest can never count again and are dropped: the state stays small and
    depends only on the set of events seen. One bounded-memory exception: a key
    whose item was dropped, seen again with a later time (a ticket "opened"
    twice more than 30 days apart), counts anew at that time.
    """

    churned_us: int | None = None
    items: tuple[churn_risk.Item, ...] = ()

    def encode(self) -> str:
        if self.churned_us is None and not self.items:
            return ""
        return orjson.dumps([self.churned_us, self.items]).decode()

    @classmethod
    def decode(cls, raw: str | None) -> RiskState:
        if not raw:
            return cls()
        churned, items = orjson.loads(raw)
        return cls(churned, tuple(map(tuple, items)))

    def persistent(self) -> bool:
        return False

    def merge(self, event: Any, t_us: int) -> RiskState:
        if event.type == "customer.churned":
            if _earlier(self.churned_us, t_us):
                return RiskState(t_us, self.items)
            return self
        code, key = churn_risk.item_of(event)
        items = list(self.items)
        keys = list(map(_ITEM_KEY, items))  # C-level scans: a customer may hold dozens of items
        if key in keys:
            j = keys.index(key)
            t, c, _ = items[j]
            if (t, c) <= (t_us, code):
                return self
            del items[j]
        bisect.insort(items, (t_us, code, key))
        cut = items[-1][0] - churn_risk.WINDOW_US
        if items[0][0] <= cut:
            del items[: bisect.bisect_right(items, (cut, _AFTER_ANY_CODE))]  # items at or before the cut
        return RiskState(self.churned_us, tuple(items))

    def contribute(self, ctx: JoinContext) -> Contribution:
        """Membership of the at-risk set, scored by when the customer falls under the threshold."""
        out = Contribution()
        if self.churned_us is None and self.items:
            expiry = churn_risk.expiry_us(self.items, ctx.config.risk_threshold)
            if expiry is not None:
                out.zmembers.add((Field.AT_RISK, ctx.entity_id, expiry / 1e6))
        return out


@dataclass(frozen=True)
class JoinContext:
    """What `contribute` may know beyond the state: the entity's id, the SLAs (s), the KPI settings."""

    entity_id: str
    sla: Mapping[str, float]
    config: KpiConfig = DEFAULT_CONFIG


class _Stateful(Protocol):
    def merge(self, event: Any, t_us: int) -> Any: ...
    def contribute(self, ctx: JoinContext) -> Contribution: ...
    def encode(self) -> str: ...
    def persistent(self) -> bool: ...


@dataclass(frozen=True)
class EntityKind:
    """A kind of joined entity: its key tag, the event types it consumes, its state class."""

    tag: str
    types: frozenset[str]
    id_of: Callable[[Any], str | None]  # None: this event does not touch an entity of the kind
    decode: Callable[[str | None], Any]


def _risk_id(event: Any) -> str | None:
    # getattr: in-memory tests build bare events; every valid ticket/survey/churn carries a customer.
    return getattr(event, "customer_id", None) if churn_risk.relevant(event) else None


ENTITIES: tuple[EntityKind, ...] = (
    EntityKind(
        "t",
        frozenset({"ticket.opened", "ticket.answered", "ticket.resolved", "ticket.reopened"}),
        lambda e: e.ticket_id,
        TicketState.decode,
    ),
    EntityKind(
        "d",
        frozenset({"deal.created", "deal.won", "deal.lost", "deal.stage_changed"}),
        lambda e: e.deal_id,
        DealState.decode,
    ),
    EntityKind(
        "c", frozenset({"customer.acquired", "customer.churned"}), lambda e: e.customer_id, CustomerState.decode
    ),
    EntityKind("i", frozenset({"invoice.issued", "invoice.paid"}), lambda e: e.invoice_id, InvoiceState.decode),
    EntityKind("o", frozenset({"order.placed", "order.delivered"}), lambda e: e.order_id, OrderState.decode),
    EntityKind(
        "q",
        frozenset({"quote.sent", "order.placed"}),
        lambda e: e.quote_id,  # an order without a quote_id touches no quote
        QuoteState.decode,
    ),
    EntityKind("oh", frozenset({"order.placed"}), lambda e: e.customer_id, OrderHistory.decode),
    EntityKind("rk", churn_risk.TYPES, _risk_id, RiskState.decode),
)

KINDS_BY_TYPE: dict[str, tuple[EntityKind, ...]] = {}
for _kind in ENTITIES:
    for _type in _kind.types:
        KINDS_BY_TYPE[_type] = (*KINDS_BY_TYPE.get(_type, ()), _kind)
