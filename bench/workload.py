"""Streams shaped like a production CRM's, for the benchmark (issue #13).

What makes them harder than `bench.reference.make_stream`:

* **Many customers, a few busy ones.** 25k customers by default; 35 % of the
  customer-bearing episodes (a ticket and its answers, a deal and its outcome,
  a survey…), ~30 % of all events, belong to 200 busy accounts, the rest spread
  evenly. Busy accounts
  build long per-customer states (churn-risk items, order histories); the many
  others make most entity states ones this worker did not just write.
* **Event-time order with realistic lags.** Episodes start spread over the
  last `span_days`; their follow-ups come later by realistic delays (an answer
  minutes to hours after its opening, a resolution hours after the answer, a
  win or loss days to weeks after the creation, a payment weeks after the
  invoice). The stream is sorted by event time, so a batch mixes the first
  events of new episodes with the follow-ups of older ones, whose entity
  states are in Redis already. Follow-ups due after "now" have not happened.
* **Exact redeliveries arriving later.** A share of records (3 % by default)
  is published a second time, byte for byte, between 1 and
  `redelivery_distance` (20k) records after the original: a producer retrying
  after a timeout, a replay, a mirror re-sending. They are new Kafka records
  with the same `event_id`: the worker must count them once.

The core mix keeps to what `bench.reference` can check independently (each
ticket answered at most once, by a public agent answer; lead sources web, ads
or others). The catalog mix adds every other event type, bot answers,
internal notes, second answers, resolutions and reopenings. Deterministic for
a given `Shape` and `now`. Imports nothing from the product.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["Shape", "make_realistic"]

_MIN, _HOUR, _DAY = 60.0, 3600.0, 86400.0


@dataclass(frozen=True)
class Shape:
    """The shape of a realistic stream; every figure is a parameter of the benchmark."""

    events: int = 200_000
    """Unique events (the published records add the redeliveries)."""
    customers: int = 25_000
    busy: int = 200
    """How many busy customers share `busy_share` of the customer-bearing episodes."""
    busy_share: float = 0.35
    """Share of customer-bearing episodes on the busy customers (~30 % of all events: leads have none)."""
    catalog: bool = False
    """Every event type (True) or the core four families only."""
    redeliveries: float = 0.03
    """Share of records published again later (exact copies)."""
    redelivery_distance: int = 20_000
    """A copy arrives uniformly between 1 and this many records after its original."""
    span_days: float = 14.0
    """Event time covered, ending a minute before `now` (inside the 30-day window)."""
    seed: int = 13

    def label(self) -> str:
        """A short description for tables: 'core, 25k customers (~30 % of events on 200), …'."""
        mix = "catalog" if self.catalog else "core"
        redeliveries = (
            f"{self.redeliveries:.0%} redeliveries up to {self.redelivery_distance // 1000}k records later"
            if self.redeliveries
            else "no redeliveries"
        )
        return (
            f"{mix}, {self.customers // 1000}k customers (~30 % of events on {self.busy}), "
            f"event-time order, {redeliveries}"
        )


def make_realistic(shape: Shape, now: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(unique events in event-time order, records to publish: the events plus their later redeliveries)."""
    events = _Generator(shape, now).run()
    rnd = random.Random(shape.seed + 1)
    published: list[dict[str, Any]] = list(events)
    if shape.redeliveries:
        # Insert copies from the end backwards so earlier insertions do not shift later positions.
        copies = sorted(
            ((i, i + 1 + rnd.randrange(shape.redelivery_distance)) for i in range(len(events))
             if rnd.random() < shape.redeliveries),
            key=lambda p: -p[1],
        )  # fmt: skip
        for original, position in copies:
            published.insert(min(position, len(published)), events[original])
    return events, published


_PRIORITIES = ("urgent", "high", "normal", "low")
_PRIORITY_W = (5, 15, 60, 20)
_FIRST_ANSWER_H = {"urgent": 0.15, "high": 0.6, "normal": 2.5, "low": 8.0}  # median hours
_CORE_SOURCES = ("web", "ads", "tiktok", "podcast", None)
_CORE_SOURCE_W = (45, 30, 10, 5, 10)
_CATALOG_SOURCES = ("web", "referral", "ads", "event", "partner", "email", "social", "webinar", None)
_CATALOG_SOURCE_W = (30, 12, 20, 7, 8, 10, 8, 3, 2)
_CATEGORIES = ("question", "problem", "complaint", "cancellation", "other")
_CATEGORY_W = (45, 30, 10, 5, 10)
_KINDS = ("nps", "csat", "ces")
_RANGE = {"nps": (0, 10), "csat": (1, 5), "ces": (1, 7)}


class _Generator:
    def __init__(self, shape: Shape, now: datetime) -> None:
        self.shape = shape
        self.rnd = random.Random(shape.seed)
        self.end_s = now.astimezone(UTC).timestamp() - 60.0
        self.start_s = self.end_s - shape.span_days * _DAY
        self.events: list[tuple[float, int, dict[str, Any]]] = []
        self.seq = 0
        self.ids = 0
        self.episode: list[tuple[float, int, dict[str, Any]]] = []
        self.users = [f"u{i}" for i in range(60)]
        self.user_w = [self.rnd.paretovariate(1.2) for _ in self.users]

    # -- helpers ------------------------------------------------------------------

    def customer(self) -> str:
        s, rnd = self.shape, self.rnd
        if rnd.random() < s.busy_share:
            return f"c{rnd.randrange(s.busy)}"
        return f"c{s.busy + rnd.randrange(s.customers - s.busy)}"

    def lognormal(self, median_s: float, sigma: float = 1.0) -> float:
        return median_s * math.exp(sigma * max(-3.0, min(3.0, self.rnd.gauss(0.0, 1.0))))

    def stamp(self, t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def emit(self, t: float, event_type: str, **fields: Any) -> bool:
        """Add an event of the current episode; False (nothing added) when it lies after the end."""
        if t > self.end_s:
            return False
        self.ids += 1
        self.seq += 1
        body = {"event_id": f"r{self.shape.seed}-{self.ids}", "type": event_type, "occurred_at": self.stamp(t)}
        body.update(fields)
        self.episode.append((t, self.seq, body))
        return True

    def pick(self, values: tuple[Any, ...], weights: tuple[float, ...]) -> Any:
        return self.rnd.choices(values, weights=weights)[0]

    def money(self, median: float) -> float:
        return round(max(0.01, self.lognormal(median, 0.7)), 2)

    # -- the run ------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        s, rnd = self.shape, self.rnd
        if s.catalog:
            starters = (self.ticket, self.lead, self.deal, self.survey, self.activity, self.order, self.invoice,
                        self.subscription, self.lifecycle, self.marketing, self.quote)  # fmt: skip
            weights: tuple[float, ...] = (22, 12, 7, 5, 26, 6, 5, 5, 4, 2, 6)
        else:
            starters = (self.ticket, self.lead, self.deal, self.survey)
            weights = (45, 25, 15, 15)
        total: list[tuple[float, int, dict[str, Any]]] = []
        while len(total) < s.events:
            self.episode = []
            rnd.choices(starters, weights=weights)[0](rnd.uniform(self.start_s, self.end_s))
            total.extend(self.episode[: s.events - len(total)])
        heapq.heapify(total)
        return [heapq.heappop(total)[2] for _ in range(len(total))]

    # -- episodes -----------------------------------------------------------------

    def ticket(self, t: float) -> None:
        rnd, catalog = self.rnd, self.shape.catalog
        cid, tid = self.customer(), f"t{self.ids}"
        priority = self.pick(_PRIORITIES, _PRIORITY_W)
        opened: dict[str, Any] = {"customer_id": cid, "ticket_id": tid, "priority": priority}
        if catalog:
            opened["category"] = self.pick(_CATEGORIES, _CATEGORY_W)
            opened["channel"] = rnd.choice(("email", "chat", "phone", "web"))
        if not self.emit(t, "ticket.opened", **opened):
            return
        base = {"customer_id": cid, "ticket_id": tid}
        if catalog and rnd.random() < 0.25:
            self.emit(t + self.lognormal(20, 0.8), "ticket.answered", **base, author="bot")
        if rnd.random() < 0.08:
            return  # never answered (yet)
        first = t + self.lognormal(_FIRST_ANSWER_H[priority] * _HOUR, 1.0)
        answer: dict[str, Any] = {**base, "agent_id": f"a{rnd.randrange(40)}"}
        if rnd.random() < 0.5:
            answer["priority"] = priority
        if catalog and rnd.random() < 0.1:
            self.emit(first - self.lognormal(10 * _MIN), "ticket.answered", **answer, public=False)
        if not self.emit(first, "ticket.answered", **answer):
            return
        last = first
        if catalog and rnd.random() < 0.3:
            last = first + self.lognormal(3 * _HOUR)
            self.emit(last, "ticket.answered", **answer)
        if rnd.random() < 0.2:
            self.survey(last + self.lognormal(2 * _HOUR), cid)
        if catalog and rnd.random() < 0.85:
            resolved = last + self.lognormal(5 * _HOUR)
            if self.emit(resolved, "ticket.resolved", **base) and rnd.random() < 0.08:
                reopened = resolved + self.lognormal(_DAY)
                if self.emit(reopened, "ticket.reopened", **base):
                    self.emit(reopened + self.lognormal(6 * _HOUR), "ticket.resolved", **base)

    def survey(self, t: float, cid: str | None = None) -> None:
        kind = self.rnd.choice(_KINDS)
        lo, hi = _RANGE[kind]
        score = min(hi, max(lo, round(self.rnd.triangular(lo, hi, hi - (hi - lo) / 4))))
        if kind == "ces":
            score = lo + hi - score  # CES: low is good
        self.emit(t, "survey.submitted", customer_id=cid or self.customer(), survey_id=f"s{self.ids}", kind=kind,
                  score=score)  # fmt: skip

    def lead(self, t: float) -> None:
        rnd, catalog = self.rnd, self.shape.catalog
        lid = f"l{self.ids}"
        fields: dict[str, Any] = {"lead_id": lid}
        source = self.pick(_CATALOG_SOURCES, _CATALOG_SOURCE_W) if catalog else self.pick(_CORE_SOURCES, _CORE_SOURCE_W)
        if source is not None:
            fields["lead_source"] = source
        if not self.emit(t, "lead.created", **fields):
            return
        if rnd.random() > 0.4:
            if catalog and rnd.random() < 0.6:
                self.emit(t + self.lognormal(3 * _DAY, 0.8), "lead.lost", lead_id=lid, reason=rnd.choice(
                    ("no response", "not a fit", "no budget", "spam", "student")))  # fmt: skip
            return
        qualified = t + self.lognormal(8 * _HOUR)
        if catalog and not self.emit(qualified, "lead.qualified", lead_id=lid):
            return
        if rnd.random() < 0.5:
            cid = self.customer()
            converted = qualified + self.lognormal(2 * _DAY, 0.8)
            if self.emit(converted, "lead.converted", lead_id=lid, customer_id=cid) and rnd.random() < 0.6:
                self.deal(converted + self.lognormal(2 * _HOUR), cid)

    def deal(self, t: float, cid: str | None = None) -> None:
        rnd, catalog = self.rnd, self.shape.catalog
        cid = cid or self.customer()
        did, currency = f"d{self.ids}", "EUR" if rnd.random() < 0.7 else "USD"
        amount = self.money(8000)
        created: dict[str, Any] = {"customer_id": cid, "deal_id": did, "amount": amount, "currency": currency}
        if not self.emit(t, "deal.created", **created):
            return
        cycle = self.lognormal(6 * _DAY, 0.7)
        if catalog:
            for k, stage in enumerate(("qualification", "proposal", "negotiation")):
                if rnd.random() < 0.6:
                    self.emit(t + cycle * (0.2 + 0.25 * k), "deal.stage_changed", customer_id=cid, deal_id=did,
                              stage=stage)  # fmt: skip
        outcome = rnd.random()
        if outcome < 0.3:
            won = {"customer_id": cid, "deal_id": did, "amount": round(amount * 0.95, 2), "currency": currency}
            if rnd.random() < 0.5:
                won["deal_created_at"] = self.stamp(t)
            if self.emit(t + cycle, "deal.won", **won) and catalog and rnd.random() < 0.7:
                self.order(t + cycle + self.lognormal(_DAY), cid, won["amount"], currency)
        elif outcome < 0.85:
            lost: dict[str, Any] = {"customer_id": cid, "deal_id": did}
            if rnd.random() < 0.8:
                lost["reason"] = rnd.choice(("price", "competitor", "timing", "no decision"))
            self.emit(t + cycle, "deal.lost", **lost)

    # -- the rest of the catalog ----------------------------------------------------

    def activity(self, t: float) -> None:
        fields: dict[str, Any] = {
            "user_id": self.rnd.choices(self.users, weights=self.user_w)[0],
            "kind": self.rnd.choice(("call", "email", "meeting", "note", "other")),
        }
        if self.rnd.random() < 0.8:
            fields["customer_id"] = self.customer()
        self.emit(t, "activity.logged", **fields)

    def order(self, t: float, cid: str | None = None, amount: float | None = None, currency: str = "EUR",
              quote: str | None = None) -> None:  # fmt: skip
        rnd = self.rnd
        cid = cid or self.customer()
        oid = f"o{self.ids}"
        fields: dict[str, Any] = {"customer_id": cid, "order_id": oid, "amount": amount or self.money(400),
                                  "currency": currency}  # fmt: skip
        if quote is not None:
            fields["quote_id"] = quote
        promised = t + rnd.uniform(2, 10) * _DAY
        if rnd.random() < 0.9:
            fields["promised_at"] = self.stamp(promised)
        if not self.emit(t, "order.placed", **fields):
            return
        delivered = t + (promised - t) * rnd.uniform(0.4, 1.3)
        self.emit(delivered, "order.delivered", customer_id=cid, order_id=oid)
        if rnd.random() < 0.7:
            self.invoice(t + self.lognormal(2 * _HOUR), cid, fields["amount"], currency)

    def invoice(self, t: float, cid: str | None = None, amount: float | None = None, currency: str = "EUR") -> None:
        rnd = self.rnd
        cid = cid or self.customer()
        iid = f"i{self.ids}"
        fields = {"customer_id": cid, "invoice_id": iid, "amount": amount or self.money(300), "currency": currency,
                  "due_at": self.stamp(t + 30 * _DAY)}  # fmt: skip
        if self.emit(t, "invoice.issued", **fields) and rnd.random() < 0.85:
            self.emit(t + rnd.uniform(1, 40) * _DAY, "invoice.paid", customer_id=cid, invoice_id=iid)

    def subscription(self, t: float) -> None:
        cid = self.customer()
        sub = {"customer_id": cid, "subscription_id": f"sub-{cid}"}
        if self.emit(t, "subscription.renewal_due", **sub) and self.rnd.random() < 0.85:
            self.emit(t + self.lognormal(2 * _DAY), "subscription.renewed", **sub)

    def lifecycle(self, t: float) -> None:
        cid = self.customer()
        if self.rnd.random() < 0.6:
            self.emit(t, "customer.acquired", customer_id=cid, segment=self.rnd.choice(("smb", "mid", "enterprise")))
        else:
            self.emit(t, "customer.churned", customer_id=cid, reason=self.rnd.choice(("price", "competitor", "gone")))

    def marketing(self, t: float) -> None:
        channel = self.rnd.choice(("ads", "social", "email", "event"))
        self.emit(t, "marketing.spend", campaign_id=f"cmp-{channel}-{self.rnd.randrange(3)}", channel=channel,
                  amount=self.money(200), currency="EUR",
                  purpose="retention" if self.rnd.random() < 0.2 else "acquisition")  # fmt: skip

    def quote(self, t: float) -> None:
        cid, qid = self.customer(), f"q{self.ids}"
        amount = self.money(2000)
        if self.emit(t, "quote.sent", customer_id=cid, quote_id=qid, amount=amount, currency="EUR") and (
            self.rnd.random() < 0.45
        ):
            self.order(t + self.lognormal(3 * _DAY, 0.8), cid, amount, "EUR", qid)


def stream_span(events: list[dict[str, Any]]) -> timedelta:
    """Event time between the first and the last event."""
    first, last = events[0]["occurred_at"], events[-1]["occurred_at"]
    return datetime.fromisoformat(last) - datetime.fromisoformat(first)
