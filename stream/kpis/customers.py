"""Customer KPIs: active customers, churn, net loss, renewals, and customers at churn risk.

Two joined entities per customer: `CustomerState` (earliest acquisition and
churn, so a repeated event never counts twice) and `RiskState` (the churn-risk
items of the last 30 days, see `stream.kpis.churn_risk`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import orjson

from stream.events.entities import Contribution, EntityKind, EntityState, PackedState, earlier
from stream.kpis import churn_risk
from stream.kpis.event_counts import events_of
from stream.kpis.registry import Current, KpiConfig, Metric, Sample, SortedSet, Tally, Totals, one, ratio

__all__ = [
    "AT_RISK",
    "CUSTOMERS_ACQUIRED",
    "ENTITIES",
    "METRICS",
    "CustomerState",
    "RiskState",
    "active_at_start",
    "churn_ratio",
    "sorted_set_queries",
]

CUSTOMERS_ACQUIRED = Tally("cacq")  # windowed: customers whose acquisition is in the bucket
CUSTOMERS_CHURNED = Tally("cchurn")  # windowed: customers whose churn is in the bucket
EVER_ACQUIRED = Tally("cust_acq")  # current: customers ever acquired
EVER_CHURNED = Tally("cust_churn")  # current: customers ever churned
AT_RISK = SortedSet("risk")  # customers at churn risk, scored by when they fall under the threshold (s)

_RENEWAL_DUE = events_of("subscription.renewal_due")
_RENEWED = events_of("subscription.renewed")


@dataclass
class CustomerState(PackedState):
    """A customer: earliest acquisition and earliest churn."""

    acquired_us: int | None = None
    churned_us: int | None = None

    def absorb(self, event: Any, t_us: int) -> None:
        if event.type == "customer.acquired":
            if earlier(self.acquired_us, t_us):
                self.acquired_us = t_us
        elif event.type == "customer.churned" and earlier(self.churned_us, t_us):
            self.churned_us = t_us

    def contribute(self, entity_id: str, config: KpiConfig) -> Contribution:
        """Acquired / churned customers, in the window of each and in the current totals."""
        out = Contribution()
        if self.acquired_us is not None:
            out.window.append((self.acquired_us, CUSTOMERS_ACQUIRED.code, 1))
            out.counters[EVER_ACQUIRED.code] = 1
        if self.churned_us is not None:
            out.window.append((self.churned_us, CUSTOMERS_CHURNED.code, 1))
            out.counters[EVER_CHURNED.code] = 1
        return out


_AFTER_ANY_CODE = "\U0010ffff"  # sorts after every item code, so (t, this) follows every item at t
_RISK_POINTS: Final = churn_risk.POINTS
_RISK_TICKETS: Final = churn_risk.TICKETS


class RiskState(EntityState):
    """One customer's churn-risk items of the last 30 days (before their newest) and churn.

    Items are keyed (a ticket by its id, a survey answer by its event id); a
    repeated key keeps its earliest time. Items 30 days or more older than the
    newest can never count again and are dropped: the state stays small and
    depends only on the set of events seen. One bounded-memory exception: a key
    whose item was dropped, seen again with a later time (a ticket "opened"
    twice more than 30 days apart), counts anew at that time.

    Kept incrementally, so an event costs O(log n) amortised, not a scan and a
    copy of the customer's n items (busy customers of bench/workload.py's core
    mix hold up to ~140, and each of their tickets and surveys lands here): the
    items as a sorted list, an index key -> (time µs, code), and the points of
    all items as two counters (fixed points, tickets). A repeat is one dict
    lookup; an item in time order (the usual case) one append; an out-of-order
    one a bisect and a C memmove; each item is dropped once, when it ages out.
    `copy()` shares the list and the index until either state is written
    (copy-on-write: the fold copies every state it reads from Redis).
    """

    __slots__ = ("_fixed", "_index", "_items", "_owned", "_tickets", "churned_us")

    def __init__(self, churned_us: int | None = None, items: Iterable[churn_risk.Item] = ()) -> None:
        """`items`: sorted by (time, code, key), one per key, none 30 days or more before the newest."""
        self.churned_us = churned_us
        self._items: list[churn_risk.Item] = list(items)
        self._index: dict[str, tuple[int, str]] = {}
        self._fixed = 0
        self._tickets = 0
        self._owned = True
        index = self._index
        for t, code, key in self._items:
            index[key] = (t, code)
            self._count(code, 1)

    @property
    def items(self) -> tuple[churn_risk.Item, ...]:
        """The items, sorted by (time µs, code, key) (a copy: O(n), for read-outs and tests)."""
        return tuple(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RiskState):
            return NotImplemented
        return self.churned_us == other.churned_us and self._items == other._items

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it replaces

    def __repr__(self) -> str:
        return f"RiskState(churned_us={self.churned_us!r}, items={self.items!r})"

    def encode(self) -> str:
        if self.churned_us is None and not self._items:
            return ""
        return orjson.dumps([self.churned_us, self._items]).decode()  # tuples encode as arrays, as before

    @classmethod
    def decode(cls, raw: str | None) -> RiskState:
        if not raw:
            return cls()
        churned, items = orjson.loads(raw)
        return cls(churned, [(t, code, key) for t, code, key in items])

    def copy(self) -> RiskState:
        """An equal state; O(1): both share the list and index until either is written."""
        new = RiskState(self.churned_us)
        new._items, new._index = self._items, self._index
        new._fixed, new._tickets = self._fixed, self._tickets
        new._owned = self._owned = False
        return new

    def _count(self, code: str, sign: int) -> None:
        self._fixed += sign * _RISK_POINTS.get(code, 0)
        if code in _RISK_TICKETS:
            self._tickets += sign

    def absorb(self, event: Any, t_us: int) -> None:
        """Merge a churn or a relevant ticket/survey event into this state (O(log n) amortised)."""
        if event.type == "customer.churned":
            if earlier(self.churned_us, t_us):
                self.churned_us = t_us
            return
        code, key = churn_risk.item_of(event)
        seen = self._index.get(key)
        if seen is not None and seen <= (t_us, code):
            return  # a repeat, or a later copy of the key: the earliest (time, code) stays
        if not self._owned:
            self._items = list(self._items)
            self._index = dict(self._index)
            self._owned = True
        items, index = self._items, self._index
        if seen is not None:
            del items[bisect.bisect_left(items, (seen[0], seen[1], key))]
            self._count(seen[1], -1)
        item = (t_us, code, key)
        if not items or item > items[-1]:
            items.append(item)  # the usual case: events come roughly in time order
        else:
            bisect.insort(items, item)
        index[key] = (t_us, code)
        self._count(code, 1)
        cut = items[-1][0] - churn_risk.WINDOW_US
        if items[0][0] <= cut:  # drop the items at or before the cut (each item leaves once)
            n = bisect.bisect_right(items, (cut, _AFTER_ANY_CODE))
            for _, gone_code, gone_key in items[:n]:
                del index[gone_key]
                self._count(gone_code, -1)
            del items[:n]

    def peak_points(self) -> int:
        """Points with every item counted (at the newest item's time, their highest); 0 without items. O(1)."""
        extra = self._tickets - churn_risk.FREE_TICKETS
        return self._fixed + (extra if extra > 0 else 0)

    def contribute(self, entity_id: str, config: KpiConfig) -> Contribution:
        """Membership of the at-risk set, scored by when the customer falls under the threshold."""
        out = Contribution()
        if self.churned_us is None and self._items:
            if self.peak_points() < config.risk_threshold:
                return out  # never at risk: points only fall after the newest item (O(1), no scan)
            expiry = churn_risk.expiry_us(self._items, config.risk_threshold)
            if expiry is not None:
                out.zmembers.add((AT_RISK.name, entity_id, expiry / 1e6))
        return out


def _risk_id(event: Any) -> str | None:
    # getattr: in-memory tests build bare events; every valid ticket/survey/churn carries a customer.
    return getattr(event, "customer_id", None) if churn_risk.relevant(event) else None


RISK = EntityKind("churn risk", "rk", churn_risk.TYPES, _risk_id, RiskState.decode)
ENTITIES = (
    EntityKind(
        "customer",
        "c",
        frozenset({"customer.acquired", "customer.churned"}),
        lambda e: e.customer_id,
        CustomerState.decode,
    ),
    RISK,
)


def sorted_set_queries(now_s: float, config: KpiConfig) -> dict[str, float]:
    """The at-risk set read at scrape time: members scored at or below now are no longer at risk."""
    return {AT_RISK.name: now_s}


# --- read-outs ---------------------------------------------------------------------------------


def _active_now(current: Any) -> int:
    return EVER_ACQUIRED.of(current) - EVER_CHURNED.of(current)


def active_at_start(t: Totals) -> int:
    """Active customers at the window's start: active now − acquired in window + churned in window."""
    return _active_now(t.current) - CUSTOMERS_ACQUIRED.of(t) + CUSTOMERS_CHURNED.of(t)


def churn_ratio(t: Totals) -> float | None:
    """Churned in the window / active at its start; None when nobody was active at the start."""
    start = active_at_start(t)
    return CUSTOMERS_CHURNED.of(t) / start if start > 0 else None


def _customers_active(c: Current) -> Iterator[Sample]:
    return one(_active_now(c.counters))


def _churn(t: Totals) -> Iterator[Sample]:
    value = churn_ratio(t)
    if value is not None:
        yield (), value


def _net_loss(t: Totals) -> Iterator[Sample]:
    start = active_at_start(t)
    if start > 0:
        yield (), (start - _active_now(t.current)) / start


def _renewal(t: Totals) -> Iterator[Sample]:
    return ratio(_RENEWED.of(t), _RENEWAL_DUE.of(t))


def _at_risk(c: Current) -> Iterator[Sample]:
    z = c.zsets[AT_RISK.name]
    # Scores are the moment each customer falls under the threshold: those still ahead count.
    return one(z.size - z.at_or_below)


METRICS: tuple[Metric, ...] = (
    Metric(
        "crm_customers_active",
        "Customers acquired - customers churned, now.",
        (),
        _customers_active,
        unit="count",
        domain="customers",
        windowed=False,
    ),
    Metric(
        "crm_customer_churn_ratio",
        "Churned in window / active at window start (= active now - acquired in window + churned in window).",
        (),
        _churn,
        unit="ratio",
        domain="customers",
    ),
    Metric(
        "crm_customer_net_loss_ratio",
        "(Active at window start - active now) / active at window start.",
        (),
        _net_loss,
        unit="ratio",
        domain="customers",
    ),
    Metric(
        "crm_subscription_renewal_ratio",
        "subscription.renewed / subscription.renewal_due in the window.",
        (),
        _renewal,
        unit="ratio",
        domain="customers",
    ),
    Metric(
        "crm_customers_at_risk",
        "Customers not churned whose churn-risk points over the trailing 30 days reach the threshold "
        "(CRM_KPI_CHURN_RISK_THRESHOLD, default 4); see `crm-kpi at-risk`.",
        (),
        _at_risk,
        unit="count",
        domain="customers",
        windowed=False,
    ),
)
