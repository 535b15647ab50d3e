"""An independent, deliberately plain model of every KPI series the exporter serves, in every window.

Imports nothing from the product (only the standard library), so a bug in the product cannot hide
in it: each figure is computed from the events as docs/kpi-definitions.md defines it, with whole
lists and sorting instead of the product's counters, entity states and sketches.

`expected(events, now, config)` gives every series as {(metric, sorted labels): value}, the way
`tests.support.harness.scrape` returns the exporter's page. Window membership here is the
nominal one (0 <= now - occurred_at <= W, future events included): the product's buckets may add
up to 1/60 of a window at its old edge, and the worker and the exporter read their own clocks a
little after `now`. Streams for which both differences cannot matter are the callers' job:
`edge_free(age, headroom, config)` says whether an event `age` seconds before `now` (or a due date,
or an opening hint) gives the same figures whenever the worker and the exporter run within
`headroom` seconds after `now`. `make_stream` builds such streams, every type with joined ids.

Two figures move with the reading clock by design and come with bounds rather than a point:
`crm_ticket_oldest_awaiting_response_seconds` is given at `now`; read at `now + d` it is that plus d.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

__all__ = [
    "OLDEST_AWAITING",
    "QUANTILE_METRICS",
    "Config",
    "Series",
    "edge_free",
    "expected",
    "make_stream",
    "operational",
    "window_label",
]

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]

DAY = 86400
PRIORITIES = ("urgent", "high", "normal", "low")
QUANTILES = (0.5, 0.9, 0.99)
QUANTILE_METRICS = frozenset(
    {"crm_first_response_seconds", "crm_ticket_first_resolution_seconds", "crm_first_response_business_seconds"}
)
OLDEST_AWAITING = "crm_ticket_oldest_awaiting_response_seconds"
RISK_DAYS = 30
ORDER_GAP_DAYS = 365
CLV_WINDOW_S = 30 * DAY


def _nine_to_five() -> dict[int, tuple[tuple[int, int], ...]]:
    return {d: ((9 * 3600, 17 * 3600),) for d in range(5)}


@dataclass(frozen=True)
class Config:
    """The settings the figures depend on, with the documented defaults (docs/configuration.md).

    `business_week`: weekday (Monday 0) -> opening intervals in seconds of the local day.
    """

    windows_s: tuple[int, ...] = (3600, DAY, 7 * DAY, 30 * DAY)
    sla_s: Mapping[str, float] = field(
        default_factory=lambda: {"urgent": 900.0, "high": 3600.0, "normal": 14400.0, "low": 86400.0}
    )
    lead_sources: frozenset[str] = frozenset({"web", "referral", "ads", "event", "partner", "email", "social"})
    lost_reasons: frozenset[str] = frozenset(
        {"no response", "not a fit", "no budget", "competitor", "duplicate", "bad timing", "spam"}
    )
    stages: tuple[str, ...] = ("new", "qualification", "proposal", "negotiation")
    risk_threshold: int = 4
    state_ttl_s: float = 90.0 * DAY
    max_future_skew_s: float = 300.0
    business_tz: str = "UTC"
    business_week: Mapping[int, tuple[tuple[int, int], ...]] = field(default_factory=_nine_to_five)
    holidays: frozenset[date] = frozenset()


def window_label(seconds: int) -> str:
    """'1h', '24h', '7d', '90m': days only beyond one day, else hours, else minutes."""
    if seconds % DAY == 0 and seconds > DAY:
        return f"{seconds // DAY}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}m"


def edge_free(age_s: float, headroom_s: float, config: Config = Config(), due: bool = False) -> bool:
    """Whether a time `age_s` before `now` gives the same figures read anywhere in [now, now + headroom].

    For an event time, avoided are: each window's old edge (with its bucket of lag), each SLA
    (awaiting tickets over it), the 30 days of churn risk (with the future skew, which moves a
    customer's newest item), the state TTL (awaiting tickets older than it are forgotten), the
    longest window (late events) and the future skew (rejected events). For an invoice's due
    date (`due`): the reading clock itself (overdue from age 0).
    """
    h = headroom_s
    margin = 1.0  # for the microseconds that keep a stream's events apart
    bands: list[tuple[float, float]] = []
    if due:
        bands.append((-h, 0.0))
    else:
        for w in config.windows_s:
            bands.append((w - h, w + w / 60))
        bands += [(s - h, s) for s in config.sla_s.values()]
        risk = RISK_DAYS * DAY
        bands.append((risk - config.max_future_skew_s - h, risk))
        bands.append((config.state_ttl_s - h, config.state_ttl_s))
        bands.append((-config.max_future_skew_s - h, -config.max_future_skew_s))
    return not any(lo - margin <= age_s <= hi + margin for lo, hi in bands)


# --- reading events ----------------------------------------------------------------------


def _us(text: str) -> int:
    """Microseconds since the epoch of an RFC 3339 timestamp with offset."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _micros(amount: Any) -> int:
    """An amount as integer micro-units (six decimal places, half to even)."""
    return int((Decimal(str(amount)) * 1_000_000).quantize(Decimal(1), rounding="ROUND_HALF_EVEN"))


@dataclass
class _Ev:
    kind: str
    t: int  # occurred_at, µs
    raw: dict[str, Any]
    order: int  # position in the stream (first copy)

    def __getitem__(self, name: str) -> Any:
        return self.raw[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.raw.get(name, default)


def unique(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The first copy of each event_id, in stream order."""
    seen: set[str] = set()
    out = []
    for e in events:
        if e["event_id"] not in seen:
            seen.add(e["event_id"])
            out.append(dict(e))
    return out


def operational(published_valid: Sequence[Mapping[str, Any]], now: float, config: Config = Config()) -> dict[str, Any]:
    """The worker's counters for these valid records: processed per type, duplicates, late events."""
    first = unique(published_valid)
    oldest = (now - max(config.windows_s)) * 1_000_000
    return {
        "processed": dict(Counter(e["type"] for e in first)),
        "duplicates": len(published_valid) - len(first),
        "late": sum(_us(e["occurred_at"]) < oldest for e in first),
    }


# --- the figures -------------------------------------------------------------------------


def _quantile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    h = (len(xs) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def _business_seconds(start_us: int, end_us: int, config: Config) -> float:
    """Seconds of [start, end] inside the opening hours, local day by local day."""
    if end_us <= start_us:
        return 0.0
    zone = ZoneInfo(config.business_tz)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    start = epoch + timedelta(microseconds=start_us)
    end = epoch + timedelta(microseconds=end_us)
    day = start.astimezone(zone).date() - timedelta(days=1)
    last = end.astimezone(zone).date() + timedelta(days=1)
    total = timedelta(0)
    while day <= last:
        if day not in config.holidays:
            for lo, hi in config.business_week.get(day.weekday(), ()):
                # Wall-clock arithmetic: 09:00 local is nine hours of the local clock after midnight.
                midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
                open_at, close_at = midnight + timedelta(seconds=lo), midnight + timedelta(seconds=hi)
                a, b = max(start, open_at.astimezone(UTC)), min(end, close_at.astimezone(UTC))
                if b > a:
                    total += b - a
        day += timedelta(days=1)
    return total / timedelta(seconds=1)


def _cap(value: str | None, allowed: Iterable[str], absent: str = "unknown") -> str:
    if value is None:
        return absent
    return value if value in allowed else "other"


class _Out:
    def __init__(self) -> None:
        self.series: Series = {}

    def put(self, name: str, value: float, **labels: str) -> None:
        self.series[(name, tuple(sorted(labels.items())))] = float(value)


def expected(events: Iterable[Mapping[str, Any]], now: float, config: Config = Config()) -> Series:
    """Every KPI series for these valid events (repeats of an event_id count once) read at `now` (unix s).

    Events are JSON-like dicts as producers publish them. Future events up to the skew count at once.
    """
    evs = [_Ev(e["type"], _us(e["occurred_at"]), e, i) for i, e in enumerate(unique(events))]
    now_us = round(now * 1_000_000)
    longest = max(config.windows_s)
    late_before = now_us - longest * 1_000_000

    def in_window(t: int | None, w: int) -> bool:
        return t is not None and t >= late_before and now_us - t <= w * 1_000_000

    out = _Out()
    by_kind: dict[str, list[_Ev]] = defaultdict(list)
    for e in evs:
        by_kind[e.kind].append(e)

    def count(kind: str, w: int) -> int:
        return sum(in_window(e.t, w) for e in by_kind[kind])

    tickets = _tickets(by_kind)
    business_of: dict[int, float] = {}

    def business(tk: dict[str, Any]) -> float:
        """Business-hours seconds of a ticket's first response (only for those in a window: it is slow)."""
        key = id(tk)
        if key not in business_of:
            business_of[key] = _business_seconds(tk["start"], tk["answered"], config)
        return business_of[key]

    deals = _deals(by_kind)
    customers = _customers(by_kind)
    orders, quotes, histories = _orders(by_kind), _quotes(by_kind), _histories(by_kind)
    invoices = _invoices(by_kind)

    ever_acquired = sum(c["acquired"] is not None for c in customers.values())
    ever_churned = sum(c["churned"] is not None for c in customers.values())
    active_now = ever_acquired - ever_churned

    for w in config.windows_s:
        label = window_label(w)

        def put(name: str, value: float, label: str = label, **labels: str) -> None:
            out.put(name, value, window=label, **labels)

        def ratio(name: str, num: float, den: float, **labels: str) -> None:
            if den:
                put(name, num / den, **labels)

        # Events, leads, deals (event counts).
        for kind, n in Counter(e.kind for e in evs if in_window(e.t, w)).items():
            put("crm_window_events", n, type=kind)
        for src, n in Counter(
            _cap(e.get("lead_source"), config.lead_sources) for e in by_kind["lead.created"] if in_window(e.t, w)
        ).items():
            put("crm_leads_created", n, lead_source=src)
        created = count("lead.created", w)
        ratio("crm_lead_conversion_ratio", count("lead.converted", w), created)
        ratio("crm_lead_qualification_ratio", count("lead.qualified", w), created)
        for reason, n in Counter(
            _cap(e.get("reason"), config.lost_reasons) for e in by_kind["lead.lost"] if in_window(e.t, w)
        ).items():
            put("crm_leads_lost", n, reason=reason)
        won = [e for e in by_kind["deal.won"] if in_window(e.t, w)]
        put("crm_deals_won", len(won))
        ratio("crm_deal_win_ratio", len(won), len(won) + count("deal.lost", w))
        won_amount: dict[str, int] = defaultdict(int)
        won_n: Counter[str] = Counter()
        for e in won:
            won_amount[e["currency"]] += _micros(e["amount"])
            won_n[e["currency"]] += 1
        for cur, micros in won_amount.items():
            if micros:  # a currency whose wins all had amount 0 has no amount series
                put("crm_deal_won_amount", micros / 1e6, currency=cur)
                put("crm_deal_size_average", micros / 1e6 / won_n[cur], currency=cur)
        cycles = [d["won"] - d["creation"] for d in deals.values() if d["creation"] is not None and in_window(d["won"], w)]
        ratio("crm_sales_cycle_seconds_average", sum(cycles) / 1e6, len(cycles))

        # Support.
        responses = [tk for tk in tickets.values() if tk["response"] is not None and in_window(tk["answered"], w)]
        if responses:
            values = [tk["response"] / 1e6 for tk in responses]
            for q in QUANTILES:
                put("crm_first_response_seconds", _quantile(values, q), quantile=str(q))
                put(
                    "crm_first_response_business_seconds",
                    _quantile([business(tk) for tk in responses], q),
                    quantile=str(q),
                )
            put("crm_first_response_seconds_average", sum(values) / len(values))
            for prio in PRIORITIES:
                mine = [tk for tk in responses if tk["priority"] == prio]
                if mine:
                    breaches = sum(tk["response"] > config.sla_s[prio] * 1_000_000 for tk in mine)
                    put("crm_first_response_sla_breach_ratio", breaches / len(mine), priority=prio)
        resolutions = [
            tk["resolution"] / 1e6
            for tk in tickets.values()
            if tk["resolution"] is not None and in_window(tk["resolved"], w)
        ]
        if resolutions:
            for q in QUANTILES:
                put("crm_ticket_first_resolution_seconds", _quantile(resolutions, q), quantile=str(q))
        ratio("crm_ticket_reopen_ratio", count("ticket.reopened", w), count("ticket.resolved", w))

        # Satisfaction.
        surveys: dict[str, list[int]] = defaultdict(list)
        for e in by_kind["survey.submitted"]:
            if in_window(e.t, w):
                surveys[e["kind"]].append(e["score"])
        for kind, scores in surveys.items():
            put("crm_survey_responses", len(scores), kind=kind)
        nps, csat, ces = surveys.get("nps", []), surveys.get("csat", []), surveys.get("ces", [])
        ratio("crm_nps_score", 100 * (sum(s >= 9 for s in nps) - sum(s <= 6 for s in nps)), len(nps))
        ratio("crm_csat_ratio", sum(s >= 4 for s in csat), len(csat))
        ratio("crm_ces_average", sum(ces), len(ces))

        # Customers and marketing.
        acquired = sum(in_window(c["acquired"], w) for c in customers.values())
        churned = sum(in_window(c["churned"], w) for c in customers.values())
        start = active_now - acquired + churned
        if start > 0:
            put("crm_customer_churn_ratio", churned / start)
            put("crm_customer_net_loss_ratio", (start - active_now) / start)
        ratio("crm_subscription_renewal_ratio", count("subscription.renewed", w), count("subscription.renewal_due", w))
        spend: dict[tuple[str, str], int] = defaultdict(int)
        for e in by_kind["marketing.spend"]:
            if in_window(e.t, w):
                spend[(e.get("purpose") or "acquisition", e["currency"])] += _micros(e["amount"])
        for (purpose, cur), micros in spend.items():
            if not micros:
                continue  # a currency that spent 0 has no cost series
            if purpose == "acquisition":
                ratio("crm_customer_acquisition_cost", micros / 1e6, acquired, currency=cur)
                ratio("crm_cost_per_lead", micros / 1e6, created, currency=cur)
                ratio("crm_cost_per_opportunity", micros / 1e6, count("deal.created", w), currency=cur)
            elif start > 0:
                put("crm_retention_cost_per_customer", micros / 1e6 / start, currency=cur)

        # Commerce.
        placed = [o for o in orders.values() if in_window(o["placed"], w)]
        order_n: Counter[str] = Counter(o["currency"] for o in placed)
        order_amount: dict[str, int] = defaultdict(int)
        for o in placed:
            order_amount[o["currency"]] += o["amount"]
        for cur, n in order_n.items():  # free orders average 0
            put("crm_order_value_average", order_amount[cur] / 1e6 / n, currency=cur)
        buyers = Counter(o["customer"] for o in placed)
        ratio("crm_repeat_purchase_ratio", sum(n >= 2 for n in buyers.values()), len(buyers))
        ratio(
            "crm_quote_order_ratio",
            sum(q["sent"] is not None and in_window(q["ordered"], w) for q in quotes.values()),
            count("quote.sent", w),
        )
        gaps = [gap for history in histories.values() for t1, gap in history if in_window(t1, w)]
        ratio("crm_order_interval_seconds_average", sum(gaps) / 1e6, len(gaps))
        delivered = [o for o in orders.values() if o["promised"] is not None and in_window(o["delivered"], w)]
        ratio("crm_delivery_on_time_ratio", sum(o["delivered"] <= o["promised"] for o in delivered), len(delivered))
        if w == CLV_WINDOW_S and start > 0 and churned and buyers:
            per_customer = len(placed) / len(buyers)
            churn = churned / start
            for cur, n in order_n.items():
                out.put("crm_customer_lifetime_value", order_amount[cur] / 1e6 / n * per_customer / churn, currency=cur)

        # Activity.
        activities = [e for e in by_kind["activity.logged"] if in_window(e.t, w)]
        put("crm_crm_users_active", len({e["user_id"] for e in activities}))
        for kind, n in Counter(e["kind"] for e in activities).items():
            put("crm_activities", n, kind=kind)

    # "Now" figures: every valid event, however old.
    open_deals = [d for d in deals.values() if d["created"] is not None and d["won"] is None and d["lost"] is None]
    by_stage = Counter(d["stage"] if d["stage"] in config.stages else "other" for d in open_deals)
    for stage in config.stages:
        out.put("crm_deals_open", by_stage.get(stage, 0), stage=stage)
    if by_stage.get("other"):
        out.put("crm_deals_open", by_stage["other"], stage="other")
    pipeline: dict[str, int] = defaultdict(int)
    for d in open_deals:
        pipeline[d["currency"]] += d["amount"]
    for cur, micros in pipeline.items():
        if micros:
            out.put("crm_pipeline_open_amount", micros / 1e6, currency=cur)

    oldest_kept = now_us - config.state_ttl_s * 1_000_000
    for prio in PRIORITIES:
        awaiting = [
            tk["opened"]
            for tk in tickets.values()
            if tk["opened"] is not None
            and tk["answered"] is None
            and tk["priority"] == prio
            and tk["opened"] >= oldest_kept  # older ones are forgotten (docs: known limits)
        ]
        out.put("crm_tickets_awaiting_response", len(awaiting), priority=prio)
        over = sum(t <= now_us - config.sla_s[prio] * 1_000_000 for t in awaiting)
        out.put("crm_tickets_awaiting_response_over_sla", over, priority=prio)
        if awaiting:
            out.put(OLDEST_AWAITING, max(0.0, (now_us - min(awaiting)) / 1e6), priority=prio)
        backlog = sum(tk["in_backlog"] and tk["priority"] == prio for tk in tickets.values())
        out.put("crm_tickets_open", backlog, priority=prio)

    out.put("crm_customers_active", active_now)
    out.put("crm_customers_at_risk", _at_risk(by_kind, now_us, config))
    receivables: dict[str, int] = defaultdict(int)
    overdue = 0
    for inv in invoices.values():
        if inv["issued"] is not None and inv["paid"] is None:
            receivables[inv["currency"]] += inv["amount"]
            overdue += inv["due"] <= now_us
    for cur, micros in receivables.items():
        if micros:
            out.put("crm_receivables_outstanding_amount", micros / 1e6, currency=cur)
    out.put("crm_invoices_overdue", overdue)
    return out.series


# --- joined entities ----------------------------------------------------------------------


def _earliest(events: Iterable[_Ev]) -> _Ev | None:
    """The earliest event (time first); None when there is none."""
    return min(events, key=lambda e: e.t, default=None)


def _group(events: Iterable[_Ev], key: str) -> dict[str, list[_Ev]]:
    out: dict[str, list[_Ev]] = defaultdict(list)
    for e in events:
        if e.get(key) is not None:
            out[e[key]].append(e)
    return out


def _tickets(by_kind: Mapping[str, list[_Ev]]) -> dict[str, dict[str, Any]]:
    everything = [e for k in ("ticket.opened", "ticket.answered", "ticket.resolved", "ticket.reopened") for e in by_kind[k]]
    out = {}
    for tid, evs in _group(everything, "ticket_id").items():
        opening = _earliest(e for e in evs if e.kind == "ticket.opened")
        hints = [e for e in evs if e.kind == "ticket.answered" and e.get("ticket_opened_at") is not None]
        hint = min(hints, key=lambda e: _us(e["ticket_opened_at"]), default=None)
        answer = _earliest(
            e for e in evs if e.kind == "ticket.answered" and e.get("public", True) and e.get("author", "agent") == "agent"
        )
        resolutions = [e.t for e in evs if e.kind == "ticket.resolved"]
        reopens = [e.t for e in evs if e.kind == "ticket.reopened"]
        opened = opening.t if opening is not None else None
        start = opened if opened is not None else (_us(hint["ticket_opened_at"]) if hint is not None else None)
        if opening is not None:
            priority = opening.get("priority") or "normal"
        elif hint is not None:
            priority = hint.get("priority") or "normal"
        else:
            priority = "normal"
        answered = answer.t if answer is not None else None
        response = resolution = None
        if answered is not None and start is not None:
            response = max(0, answered - start)  # an answer stamped before its opening counts as instant
        first_resolved = min(resolutions, default=None)
        if first_resolved is not None and start is not None:
            resolution = max(0, first_resolved - start)
        in_backlog = opened is not None and (
            not resolutions or (bool(reopens) and max(reopens) >= max(resolutions))
        )
        out[tid] = {
            "opened": opened,
            "priority": priority,
            "answered": answered,
            "start": start,
            "response": response,
            "resolved": first_resolved,
            "resolution": resolution,
            "in_backlog": in_backlog,
        }
    return out


def _deals(by_kind: Mapping[str, list[_Ev]]) -> dict[str, dict[str, Any]]:
    everything = [e for k in ("deal.created", "deal.won", "deal.lost", "deal.stage_changed") for e in by_kind[k]]
    out = {}
    for did, evs in _group(everything, "deal_id").items():
        creation = _earliest(e for e in evs if e.kind == "deal.created")
        wins = sorted((e for e in evs if e.kind == "deal.won"), key=lambda e: e.t)
        lost = _earliest(e for e in evs if e.kind == "deal.lost")
        # The latest stage by occurred_at (a created deal starts at its own stage, default "new").
        stages = [(e.t, e.get("stage") or "new") for e in evs if e.kind in ("deal.created", "deal.stage_changed")]
        stage = max(stages)[1] if stages else None
        carried = [e for e in wins if e.get("deal_created_at") is not None]
        if carried:
            known: int | None = _us(carried[0]["deal_created_at"])  # the earliest win that carries one
        else:
            known = creation.t if creation is not None else None
        out[did] = {
            "created": creation.t if creation is not None else None,
            "amount": _micros(creation["amount"]) if creation is not None else 0,
            "currency": creation["currency"] if creation is not None else None,
            "won": wins[0].t if wins else None,
            "lost": lost.t if lost is not None else None,
            "stage": stage,
            "creation": known if wins else None,
        }
    return out


def _customers(by_kind: Mapping[str, list[_Ev]]) -> dict[str, dict[str, int | None]]:
    out: dict[str, dict[str, int | None]] = defaultdict(lambda: {"acquired": None, "churned": None})
    for kind, name in (("customer.acquired", "acquired"), ("customer.churned", "churned")):
        for cid, evs in _group(by_kind[kind], "customer_id").items():
            out[cid][name] = min(e.t for e in evs)
    return dict(out)


def _orders(by_kind: Mapping[str, list[_Ev]]) -> dict[str, dict[str, Any]]:
    placements = _group(by_kind["order.placed"], "order_id")
    deliveries = _group(by_kind["order.delivered"], "order_id")
    out = {}
    for oid, evs in placements.items():
        first = _earliest(evs)
        assert first is not None
        delivered = min((e.t for e in deliveries.get(oid, ())), default=None)
        promised = first.get("promised_at")
        out[oid] = {
            "placed": first.t,
            "customer": first["customer_id"],
            "currency": first["currency"],
            "amount": _micros(first["amount"]),
            "promised": _us(promised) if promised is not None else None,
            "delivered": delivered,
        }
    return out


def _quotes(by_kind: Mapping[str, list[_Ev]]) -> dict[str, dict[str, int | None]]:
    sent = _group(by_kind["quote.sent"], "quote_id")
    ordered = _group(by_kind["order.placed"], "quote_id")
    return {
        qid: {
            "sent": min((e.t for e in sent.get(qid, ())), default=None),
            "ordered": min((e.t for e in ordered.get(qid, ())), default=None),
        }
        for qid in set(sent) | set(ordered)
    }


def _histories(by_kind: Mapping[str, list[_Ev]]) -> dict[str, list[tuple[int, int]]]:
    """Per customer: (order time, gap to the previous order) for orders with one within 365 days."""
    out = {}
    for cid, evs in _group(by_kind["order.placed"], "customer_id").items():
        first_time: dict[str, int] = {}
        for e in evs:
            first_time[e["order_id"]] = min(e.t, first_time.get(e["order_id"], e.t))
        times = sorted(first_time.values())
        out[cid] = [
            (t1, t1 - t0) for t0, t1 in itertools.pairwise(times) if t1 - t0 <= ORDER_GAP_DAYS * DAY * 10**6
        ]
    return out


def _invoices(by_kind: Mapping[str, list[_Ev]]) -> dict[str, dict[str, Any]]:
    issued = _group(by_kind["invoice.issued"], "invoice_id")
    paid = _group(by_kind["invoice.paid"], "invoice_id")
    out = {}
    for iid in set(issued) | set(paid):
        first = _earliest(issued.get(iid, ()))
        out[iid] = {
            "issued": first.t if first is not None else None,
            "amount": _micros(first["amount"]) if first is not None else 0,
            "currency": first["currency"] if first is not None else None,
            "due": _us(first["due_at"]) if first is not None else None,
            "paid": min((e.t for e in paid.get(iid, ())), default=None),
        }
    return out


_POINTS = {"complaint": 2, "cancellation": 3}


def _at_risk(by_kind: Mapping[str, list[_Ev]], now_us: int, config: Config) -> int:
    """Customers not churned whose points over the 30 days before now reach the threshold."""
    horizon = now_us - RISK_DAYS * DAY * 1_000_000
    churned = {e["customer_id"] for e in by_kind["customer.churned"]}
    tickets: dict[str, dict[str, _Ev]] = defaultdict(dict)  # customer -> ticket id -> earliest opening
    for e in sorted(by_kind["ticket.opened"], key=lambda e: e.t):
        tickets[e["customer_id"]].setdefault(e["ticket_id"], e)
    points: Counter[str] = Counter()
    counted_tickets: Counter[str] = Counter()
    for cid, by_ticket in tickets.items():
        for e in by_ticket.values():
            if e.t > horizon:
                counted_tickets[cid] += 1
                points[cid] += _POINTS.get(e.get("category") or "", 0)
    for cid, n in counted_tickets.items():
        points[cid] += max(0, n - 3)
    for e in by_kind["survey.submitted"]:
        if e.t > horizon:
            kind, score = e["kind"], e["score"]
            if (kind == "nps" and score <= 6) or (kind == "csat" and score <= 2):
                points[e["customer_id"]] += 2
            elif kind == "ces" and score >= 6:
                points[e["customer_id"]] += 1
    return sum(p >= config.risk_threshold and cid not in churned for cid, p in points.items())


# --- streams -------------------------------------------------------------------------------


def safe_ages(headroom_s: float, config: Config = Config(), lo: float = -240.0, hi: float = 120 * DAY) -> list[float]:
    """Ages (s) spread from `lo` to `hi`, every one `edge_free` for this headroom."""
    candidates = [lo]
    a = 30.0
    while a < hi:
        candidates.append(a)
        a *= 1.37
    return [x for x in candidates if edge_free(x, headroom_s, config)]


def make_stream(
    n: int, seed: int, now: datetime, headroom_s: float = 900.0, config: Config = Config()
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(unique events, events to publish including ~5 % producer retries) over all 24 types.

    Ids are shared on purpose: deals are created, staged, then won or lost; leads are created,
    qualified, converted or lost; tickets opened, answered (sometimes only by a bot, sometimes
    before their opening), resolved and reopened; orders cite quotes, invoices get paid; some
    joins miss (a win without its creation, an answer without its opening). Every time is
    `edge_free` for `headroom_s`, so `expected(events, now)` holds for a worker and an exporter
    that finish within that long after `now`.
    """
    rnd = random.Random(seed)
    ages = safe_ages(headroom_s, config)
    base_us = round(now.timestamp() * 1_000_000)
    counter = iter(range(10**9))

    def at(age: float) -> str:
        # A distinct microsecond per event: two events of one entity never tie.
        moment = datetime.fromtimestamp(0, UTC) + timedelta(microseconds=base_us - int(age * 1e6) + next(counter))
        return moment.isoformat().replace("+00:00", "Z")

    def money() -> dict[str, Any]:
        return {"amount": rnd.choice([0, 1, 9.99, 120.5, 2500]), "currency": rnd.choice(["EUR", "USD"])}

    events: list[dict[str, Any]] = []

    def emit(event_type: str, age: float, /, **fields: Any) -> None:
        events.append({"event_id": f"r{seed}-{len(events)}", "type": event_type, "occurred_at": at(age), **fields})

    customers = [f"c{seed}-{i}" for i in range(max(1, n // 40))]
    users = [f"u{i}" for i in range(12)]
    # Every event of an entity concerns one customer: keyed producers put them in one
    # partition (docs/events.md), where the worker joins them. An order cites a quote sent
    # to its own customer (or one never sent).
    quote_customer: dict[str, str] = {}
    while len(events) < n:
        i = len(events)
        cust = rnd.choice(customers)
        roll = rnd.random()
        age = rnd.choice(ages)
        if roll < 0.12:
            lead = f"l{seed}-{i}"
            emit("lead.created", age, lead_id=lead, lead_source=rnd.choice(["web", "ads", "tiktok", None]))
            if rnd.random() < 0.4:
                emit("lead.qualified", rnd.choice(ages), lead_id=lead)
            follow = rnd.random()
            if follow < 0.3:
                emit("lead.converted", rnd.choice(ages), lead_id=lead, customer_id=cust)
            elif follow < 0.45:
                emit("lead.lost", rnd.choice(ages), lead_id=lead, reason=rnd.choice(["spam", "student", None]))
        elif roll < 0.27:
            deal = f"d{seed}-{i}"
            m = money()
            if rnd.random() < 0.85:
                emit("deal.created", age, deal_id=deal, customer_id=cust, stage=rnd.choice(["new", "proposal"]), **m)
            if rnd.random() < 0.5:
                emit("deal.stage_changed", rnd.choice(ages), deal_id=deal, customer_id=cust,
                     stage=rnd.choice(["qualification", "negotiation", "legal"]))  # fmt: skip
            end = rnd.random()
            if end < 0.4:
                extra = {"deal_created_at": at(rnd.choice(ages))} if rnd.random() < 0.3 else {}
                emit("deal.won", rnd.choice(ages), deal_id=deal, customer_id=cust, **m, **extra)
            elif end < 0.6:
                emit("deal.lost", rnd.choice(ages), deal_id=deal, customer_id=cust, reason="price")
            if rnd.random() < 0.3:
                quote_customer[f"q{seed}-{i}"] = cust
                emit("quote.sent", rnd.choice(ages), quote_id=f"q{seed}-{i}", customer_id=cust, deal_id=deal, **money())
        elif roll < 0.5:
            ticket = f"t{seed}-{i}"
            opened = rnd.choice(ages)
            if rnd.random() < 0.9:
                emit("ticket.opened", opened, ticket_id=ticket, customer_id=cust,
                     priority=rnd.choice(["low", "normal", "high", "urgent"]),
                     category=rnd.choice([None, "question", "complaint", "cancellation"]))  # fmt: skip
            for _ in range(rnd.choice([0, 1, 1, 2])):
                extra = {"ticket_opened_at": at(opened), "priority": "high"} if rnd.random() < 0.2 else {}
                emit("ticket.answered", rnd.choice(ages), ticket_id=ticket, customer_id=cust,
                     public=rnd.random() < 0.9, author=rnd.choice(["agent", "agent", "bot"]), **extra)  # fmt: skip
            if rnd.random() < 0.5:
                emit("ticket.resolved", rnd.choice(ages), ticket_id=ticket, customer_id=cust)
                if rnd.random() < 0.3:
                    emit("ticket.reopened", rnd.choice(ages), ticket_id=ticket, customer_id=cust)
        elif roll < 0.62:
            kind = rnd.choice(["nps", "csat", "ces"])
            score = rnd.randint(*{"nps": (0, 10), "csat": (1, 5), "ces": (1, 7)}[kind])
            emit("survey.submitted", rnd.choice(ages), survey_id=f"s{i}", customer_id=cust, kind=kind, score=score)
        elif roll < 0.7:
            emit("customer.acquired", age, customer_id=cust, segment="smb")
            if rnd.random() < 0.2:
                emit("customer.churned", rnd.choice(ages), customer_id=cust)
            if rnd.random() < 0.3:
                sub = f"sub{seed}-{i}"
                emit("subscription.renewal_due", rnd.choice(ages), customer_id=cust, subscription_id=sub)
                if rnd.random() < 0.6:
                    emit("subscription.renewed", rnd.choice(ages), customer_id=cust, subscription_id=sub)
        elif roll < 0.82:
            order = f"o{seed}-{i}"
            extra: dict[str, Any] = {}
            if rnd.random() < 0.3:
                quote = f"q{seed}-{rnd.randrange(max(1, i))}"  # sometimes a quote that was sent
                extra["quote_id"] = quote if quote_customer.get(quote, cust) == cust else f"{quote}-{cust}"
            if rnd.random() < 0.5:
                extra["promised_at"] = at(rnd.choice(ages))
            emit("order.placed", age, order_id=order, customer_id=cust, **money(), **extra)
            if rnd.random() < 0.6:
                emit("order.delivered", rnd.choice(ages), order_id=order, customer_id=cust)
        elif roll < 0.9:
            invoice = f"i{seed}-{i}"
            due = rnd.choice([a for a in ages if edge_free(a, headroom_s, config, due=True)])
            emit("invoice.issued", age, invoice_id=invoice, customer_id=cust, **money(), due_at=at(due))
            if rnd.random() < 0.5:
                emit("invoice.paid", rnd.choice(ages), invoice_id=invoice, customer_id=cust)
        elif roll < 0.95:
            emit("marketing.spend", age, campaign_id=f"m{i % 5}", channel="ads", **money(),
                 purpose=rnd.choice(["acquisition", "retention"]))  # fmt: skip
        else:
            emit("activity.logged", age, user_id=rnd.choice(users), kind=rnd.choice(["call", "email", "note"]))
    events = [{k: v for k, v in e.items() if v is not None} for e in events[:n]]
    published: list[dict[str, Any]] = []
    for e in events:
        published.append(e)
        if rnd.random() < 0.05:
            published.append(e)  # a producer retry: same event, new record
    rnd.shuffle(published)  # arrival order is not event order
    return events, published

