"""The KPI registry: every metric the exporter serves, defined once (SPEC §5).

Two halves, both pure:

* `Field` names the integer counters kept per window bucket (and in the
  "current" hash). The worker adds to them (`event_fields` here, entity joins in
  `stream.joins`); Redis only ever sums them.
* `METRICS` says, for each Prometheus series, how to read it back from the
  summed counters of one window (`Totals`) or from the current state
  (`Current`). The exporter, `crm-kpi kpis`, the README table and the
  dashboards all iterate this one list.

Amounts are kept as integer micro-units of their currency, durations as
integer microseconds, so sums are exact and retractable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from stream import sketch
from stream.business_hours import Schedule

__all__ = [
    "EVENT_MEMBERS",
    "METRICS",
    "QUANTILES",
    "UNPRUNED_ZSETS",
    "Current",
    "Field",
    "KpiConfig",
    "Metric",
    "Sample",
    "Totals",
    "amount_micros",
    "cap_label",
    "event_fields",
    "metric_names",
    "zset_queries",
]

QUANTILES = (0.5, 0.9, 0.99)
_MICRO = Decimal(1_000_000)


def amount_micros(amount: Decimal) -> int:
    """An amount as integer micro-units (6 decimals, banker's rounding beyond that)."""
    return int((amount * _MICRO).to_integral_value(rounding=ROUND_HALF_EVEN))


def cap_label(value: str | None, allowed: frozenset[str], absent: str = "unknown") -> str:
    """Bound a free-form label: allowed values pass, others become 'other', None `absent`."""
    if value is None:
        return absent
    return value if value in allowed else "other"


class Field:
    """Names of the counters in a window bucket hash; the only place they are spelled."""

    @staticmethod
    def events(event_type: str) -> str:
        return f"n|{event_type}"

    @staticmethod
    def leads(source: str) -> str:
        return f"lead|{source}"

    @staticmethod
    def won_amount(currency: str) -> str:
        return f"wamt|{currency}"

    @staticmethod
    def won_count(currency: str) -> str:
        return f"wn|{currency}"

    CYCLE_N = "cyc_n"
    CYCLE_US = "cyc_us"
    FR_N = "fr_n"
    FR_US = "fr_us"

    @staticmethod
    def fr_bucket(index: int) -> str:
        return f"frq|{index}"

    @staticmethod
    def fr_priority(priority: str) -> str:
        return f"frp|{priority}"

    @staticmethod
    def fr_breach(priority: str) -> str:
        return f"frb|{priority}"

    @staticmethod
    def surveys(kind: str) -> str:
        return f"sv|{kind}"

    NPS_PROMOTERS = "nps_pro"
    NPS_DETRACTORS = "nps_det"
    CSAT_SATISFIED = "csat_ok"
    CES_SUM = "ces_sum"

    @staticmethod
    def awaiting(priority: str) -> str:
        """Sorted set of tickets awaiting a first response, scored by opening time (s)."""
        return f"aw|{priority}"

    # --- §5.2 full catalog ---------------------------------------------------------

    @staticmethod
    def leads_lost(reason: str) -> str:
        return f"llost|{reason}"

    @staticmethod
    def spend_acquisition(currency: str) -> str:
        return f"spa|{currency}"

    @staticmethod
    def spend_retention(currency: str) -> str:
        return f"spr|{currency}"

    @staticmethod
    def activities(kind: str) -> str:
        return f"act|{kind}"

    @staticmethod
    def resolution_bucket(index: int) -> str:
        """First-resolution time sketch bucket (windowed, at the first resolution)."""
        return f"rsq|{index}"

    @staticmethod
    def business_fr_bucket(index: int) -> str:
        """Business-hours first-response sketch bucket (windowed, at the first answer)."""
        return f"frbq|{index}"

    CUSTOMERS_ACQUIRED = "cacq"  # windowed: customers whose acquisition is in the bucket
    CUSTOMERS_CHURNED = "cchurn"  # windowed: customers whose churn is in the bucket
    CUR_ACQUIRED = "cust_acq"  # current: customers ever acquired
    CUR_CHURNED = "cust_churn"  # current: customers ever churned

    @staticmethod
    def tickets_open(priority: str) -> str:
        """Current: tickets in the backlog (opened, not resolved or reopened since)."""
        return f"topen|{priority}"

    @staticmethod
    def deals_open(stage: str) -> str:
        """Current: open deals by (capped) latest stage."""
        return f"dopen|{stage}"

    @staticmethod
    def pipeline(currency: str) -> str:
        """Current: created amount (µ) of open deals."""
        return f"pipe|{currency}"

    @staticmethod
    def receivables(currency: str) -> str:
        """Current: amount (µ) of issued, unpaid invoices."""
        return f"recv|{currency}"

    @staticmethod
    def orders(currency: str) -> str:
        return f"ordn|{currency}"

    @staticmethod
    def order_amount(currency: str) -> str:
        return f"orda|{currency}"

    QUOTE_ORDERS = "qord"  # windowed: orders (at their time) carrying the id of a sent quote
    INTERVAL_N = "oi_n"
    INTERVAL_US = "oi_us"
    DELIVERIES = "dlv_n"  # deliveries of orders that had a promised_at
    DELIVERIES_ON_TIME = "dlv_ok"

    OVERDUE = "overdue"  # sorted set of unpaid invoices, scored by due_at (s)
    AT_RISK = "risk"  # sorted set of customers at churn risk, scored by when they fall under (s)

    # Exact distinct counts per window (member -> count hashes, see stream.store).
    USERS = "users"  # CRM users with an activity
    BUYERS = "buyers"  # customers with an order; count = their orders

    @staticmethod
    def distinct(name: str) -> str:
        """Totals field: distinct members of `name` in the window."""
        return f"dn|{name}"

    @staticmethod
    def repeat(name: str) -> str:
        """Totals field: members of `name` counted at least twice in the window."""
        return f"d2|{name}"


DISTINCT_NAMES: tuple[str, ...] = (Field.USERS, Field.BUYERS)
UNPRUNED_ZSETS = frozenset({Field.OVERDUE})
"""Current sorted sets kept however old their scores (unpaid invoices stay overdue)."""

_DEFAULT_SCHEDULE = Schedule()
DEFAULT_LEAD_SOURCES = frozenset({"web", "referral", "ads", "event", "partner", "email", "social"})


@dataclass(frozen=True)
class KpiConfig:
    """Settings the fold and read-outs use beyond windows and SLAs (see Settings.kpi_config)."""

    lead_sources: frozenset[str] = DEFAULT_LEAD_SOURCES
    lost_reasons: frozenset[str] = frozenset(
        {"no response", "not a fit", "no budget", "competitor", "duplicate", "bad timing", "spam"}
    )
    stages: tuple[str, ...] = ("new", "qualification", "proposal", "negotiation")
    schedule: Schedule = _DEFAULT_SCHEDULE
    risk_threshold: int = 4


DEFAULT_CONFIG = KpiConfig()


class Totals(dict[str, int]):
    """Summed counters of one window: field -> integer.

    `current` holds the non-windowed counters read in the same call, for the
    figures that combine both (active customers at the window's start).
    """

    current: Mapping[str, int] = {}

    def of(self, field: str) -> int:
        return self.get(field, 0)

    def by_suffix(self, prefix: str) -> dict[str, int]:
        """{suffix: value} of every field named 'prefix|suffix'."""
        cut = len(prefix) + 1
        return {k[cut:]: v for k, v in self.items() if k.startswith(prefix + "|")}


@dataclass(frozen=True)
class ZStat:
    """A sorted set read at scrape time: size, members at or below a score, lowest score."""

    size: int
    at_or_below: int
    lowest: float | None


@dataclass(frozen=True)
class Current:
    """Non-windowed state at scrape time: counters, sorted-set stats, settings, clock."""

    counters: Mapping[str, int]
    zsets: Mapping[str, ZStat]
    now: float
    sla: Mapping[str, float]
    windows: Mapping[str, Totals] = field(default_factory=dict)
    stages: tuple[str, ...] = KpiConfig.stages


Sample = tuple[tuple[str, ...], float]


@dataclass(frozen=True)
class Metric:
    """One Prometheus gauge family: name, help (its definition), labels and read-out."""

    name: str
    help: str
    labels: tuple[str, ...]
    compute: Callable[[Any], Iterable[Sample]]
    windowed: bool = True
    section: str = "5.1"

    @property
    def all_labels(self) -> tuple[str, ...]:
        """Label names as exported, `window` first for windowed metrics."""
        return ("window", *self.labels) if self.windowed else self.labels


def _ratio(num: int | float, den: int | float) -> Iterator[Sample]:
    # SPEC §5: a zero denominator exports no series, never NaN.
    if den:
        yield (), num / den


def _one(value: float) -> Iterator[Sample]:
    yield (), value


def _per_label(values: Mapping[str, int], scale: float = 1.0) -> Iterator[Sample]:
    for label, v in sorted(values.items()):
        yield (label,), v * scale


# --- per-event counters (the windowed half of the simple KPIs) ---------------------


def event_fields(
    event: Any, lead_sources: frozenset[str], lost_reasons: frozenset[str] = KpiConfig.lost_reasons
) -> Iterator[tuple[str, int]]:
    """Counters one valid, new event adds to the bucket of its `occurred_at`.

    Joined figures (first response, sales cycle) are not here: they depend on
    entity state and come from `stream.joins`.
    """
    kind = event.type
    yield Field.events(kind), 1
    if kind == "lead.created":
        yield Field.leads(cap_label(event.lead_source, lead_sources)), 1
    elif kind == "deal.won":
        yield Field.won_amount(event.currency), amount_micros(event.amount)
        yield Field.won_count(event.currency), 1
    elif kind == "survey.submitted":
        score = event.score
        yield Field.surveys(event.kind), 1
        if event.kind == "nps":
            if score >= 9:
                yield Field.NPS_PROMOTERS, 1
            elif score <= 6:
                yield Field.NPS_DETRACTORS, 1
        elif event.kind == "csat":
            if score >= 4:
                yield Field.CSAT_SATISFIED, 1
        else:
            yield Field.CES_SUM, score
    elif kind == "marketing.spend":
        micros = amount_micros(event.amount)
        if event.purpose == "retention":
            yield Field.spend_retention(event.currency), micros
        else:
            yield Field.spend_acquisition(event.currency), micros
    elif kind == "activity.logged":
        yield Field.activities(event.kind), 1
    elif kind == "lead.lost":
        yield Field.leads_lost(cap_label(event.reason, lost_reasons)), 1


EVENT_MEMBERS: dict[str, Callable[[Any], tuple[str, str]]] = {
    "activity.logged": lambda e: (Field.USERS, e.user_id),
}
"""Per-event members of the exact distinct counts: type -> (distinct name, member)."""


# --- read-outs ------------------------------------------------------------------------


def _window_events(t: Totals) -> Iterator[Sample]:
    return _per_label(t.by_suffix("n"))


def _leads_created(t: Totals) -> Iterator[Sample]:
    return _per_label(t.by_suffix("lead"))


def _conversion(t: Totals) -> Iterator[Sample]:
    return _ratio(t.of(Field.events("lead.converted")), t.of(Field.events("lead.created")))


def _deals_won(t: Totals) -> Iterator[Sample]:
    return _one(t.of(Field.events("deal.won")))


def _win_ratio(t: Totals) -> Iterator[Sample]:
    won, lost = t.of(Field.events("deal.won")), t.of(Field.events("deal.lost"))
    return _ratio(won, won + lost)


def _won_amount(t: Totals) -> Iterator[Sample]:
    return _per_label(t.by_suffix("wamt"), 1e-6)


def _deal_size(t: Totals) -> Iterator[Sample]:
    counts = t.by_suffix("wn")
    for cur, amount in sorted(t.by_suffix("wamt").items()):
        if counts.get(cur):
            yield (cur,), amount * 1e-6 / counts[cur]


def _sales_cycle(t: Totals) -> Iterator[Sample]:
    return _ratio(t.of(Field.CYCLE_US) * 1e-6, t.of(Field.CYCLE_N))


def _fr_quantiles(t: Totals) -> Iterator[Sample]:
    counts = {int(k): v for k, v in t.by_suffix("frq").items()}
    for q in QUANTILES:
        value = sketch.quantile(counts, q)
        if value is not None:
            yield (str(q),), value


def _fr_average(t: Totals) -> Iterator[Sample]:
    return _ratio(t.of(Field.FR_US) * 1e-6, t.of(Field.FR_N))


def _fr_breach(t: Totals) -> Iterator[Sample]:
    breaches = t.by_suffix("frb")
    for prio, n in sorted(t.by_suffix("frp").items()):
        if n:
            yield (prio,), breaches.get(prio, 0) / n


def _nps(t: Totals) -> Iterator[Sample]:
    n = t.of(Field.surveys("nps"))
    return _ratio(100 * (t.of(Field.NPS_PROMOTERS) - t.of(Field.NPS_DETRACTORS)), n)


def _csat(t: Totals) -> Iterator[Sample]:
    return _ratio(t.of(Field.CSAT_SATISFIED), t.of(Field.surveys("csat")))


def _ces(t: Totals) -> Iterator[Sample]:
    return _ratio(t.of(Field.CES_SUM), t.of(Field.surveys("ces")))


def _survey_responses(t: Totals) -> Iterator[Sample]:
    return _per_label(t.by_suffix("sv"))


def _awaiting(c: Current) -> Iterator[Sample]:
    for prio in c.sla:
        yield (prio,), c.zsets[Field.awaiting(prio)].size


def _awaiting_over_sla(c: Current) -> Iterator[Sample]:
    for prio in c.sla:
        yield (prio,), c.zsets[Field.awaiting(prio)].at_or_below


def _oldest_awaiting(c: Current) -> Iterator[Sample]:
    for prio in c.sla:
        lowest = c.zsets[Field.awaiting(prio)].lowest
        if lowest is not None:
            yield (prio,), max(0.0, c.now - lowest)


# --- §5.2 read-outs -------------------------------------------------------------------

_30D = "30d"


def _quantiles_of(t: Totals, prefix: str) -> Iterator[Sample]:
    counts = {int(k): v for k, v in t.by_suffix(prefix).items()}
    for q in QUANTILES:
        value = sketch.quantile(counts, q)
        if value is not None:
            yield (str(q),), value


def _per_currency_ratio(amounts: Mapping[str, int], den: int | Mapping[str, int]) -> Iterator[Sample]:
    """amount (µ) per currency / a count (the same for every currency, or per currency)."""
    for cur, amount in sorted(amounts.items()):
        d = den if isinstance(den, int) else den.get(cur, 0)
        if d:
            yield (cur,), amount * 1e-6 / d


def _active_now(current: Mapping[str, int]) -> int:
    return int(current.get(Field.CUR_ACQUIRED, 0)) - int(current.get(Field.CUR_CHURNED, 0))


def active_at_start(t: Totals) -> int:
    """Active customers at the window's start: active now − acquired in window + churned in window."""
    return _active_now(t.current) - t.of(Field.CUSTOMERS_ACQUIRED) + t.of(Field.CUSTOMERS_CHURNED)


def churn_ratio(t: Totals) -> float | None:
    start = active_at_start(t)
    return t.of(Field.CUSTOMERS_CHURNED) / start if start > 0 else None


def _qualification(t: Totals) -> Iterator[Sample]:
    return _ratio(t.of(Field.events("lead.qualified")), t.of(Field.events("lead.created")))


def _leads_lost(t: Totals) -> Iterator[Sample]:
    return _per_label(t.by_suffix("llost"))


def _deals_open(c: Current) -> Iterator[Sample]:
    by_stage = {k: v for k, v in _by_suffix(c.counters, "dopen").items()}
    for stage in c.stages:
        yield (stage,), by_stage.pop(stage, 0)
    if by_stage.get("other"):
        yield ("other",), by_stage["other"]


def _by_suffix(values: Mapping[str, int], prefix: str) -> dict[str, int]:
    cut = len(prefix) + 1
    return {k[cut:]: int(v) for k, v in values.items() if k.startswith(prefix + "|")}


def _nonzero_amounts(c: Current, prefix: str) -> Iterator[Sample]:
    # Currencies with nothing open export no series (a 0 left by retractions would
    # otherwise depend on how events were batched).
    for cur, micros in sorted(_by_suffix(c.counters, prefix).items()):
        if micros:
            yield (cur,), micros * 1e-6


def _pipeline(c: Current) -> Iterator[Sample]:
    return _nonzero_amounts(c, "pipe")


def _resolution(t: Totals) -> Iterator[Sample]:
    return _quantiles_of(t, "rsq")


def _reopen(t: Totals) -> Iterator[Sample]:
    return _ratio(t.of(Field.events("ticket.reopened")), t.of(Field.events("ticket.resolved")))


def _tickets_open(c: Current) -> Iterator[Sample]:
    by_prio = _by_suffix(c.counters, "topen")
    for prio in c.sla:
        yield (prio,), by_prio.get(prio, 0)


def _business_fr(t: Totals) -> Iterator[Sample]:
    return _quantiles_of(t, "frbq")


def _customers_active(c: Current) -> Iterator[Sample]:
    return _one(_active_now(c.counters))


def _churn(t: Totals) -> Iterator[Sample]:
    ratio = churn_ratio(t)
    if ratio is not None:
        yield (), ratio


def _net_loss(t: Totals) -> Iterator[Sample]:
    start = active_at_start(t)
    if start > 0:
        yield (), (start - _active_now(t.current)) / start


def _renewal(t: Totals) -> Iterator[Sample]:
    return _ratio(t.of(Field.events("subscription.renewed")), t.of(Field.events("subscription.renewal_due")))


def _cac(t: Totals) -> Iterator[Sample]:
    return _per_currency_ratio(t.by_suffix("spa"), t.of(Field.CUSTOMERS_ACQUIRED))


def _cost_per_lead(t: Totals) -> Iterator[Sample]:
    return _per_currency_ratio(t.by_suffix("spa"), t.of(Field.events("lead.created")))


def _cost_per_opportunity(t: Totals) -> Iterator[Sample]:
    return _per_currency_ratio(t.by_suffix("spa"), t.of(Field.events("deal.created")))


def _retention_cost(t: Totals) -> Iterator[Sample]:
    start = active_at_start(t)
    if start > 0:
        yield from _per_currency_ratio(t.by_suffix("spr"), start)


def _quote_order(t: Totals) -> Iterator[Sample]:
    return _ratio(t.of(Field.QUOTE_ORDERS), t.of(Field.events("quote.sent")))


def _order_interval(t: Totals) -> Iterator[Sample]:
    return _ratio(t.of(Field.INTERVAL_US) * 1e-6, t.of(Field.INTERVAL_N))


def _on_time(t: Totals) -> Iterator[Sample]:
    return _ratio(t.of(Field.DELIVERIES_ON_TIME), t.of(Field.DELIVERIES))


def _order_value(t: Totals) -> Iterator[Sample]:
    return _per_currency_ratio(t.by_suffix("orda"), t.by_suffix("ordn"))


def _repeat_purchase(t: Totals) -> Iterator[Sample]:
    return _ratio(t.of(Field.repeat(Field.BUYERS)), t.of(Field.distinct(Field.BUYERS)))


def _clv(c: Current) -> Iterator[Sample]:
    t = c.windows.get(_30D)
    if t is None:
        return
    churn = churn_ratio(t)
    buyers = t.of(Field.distinct(Field.BUYERS))
    if not churn or not buyers:
        return
    orders = t.by_suffix("ordn")
    per_customer = sum(orders.values()) / buyers
    for cur, aov in _per_currency_ratio(t.by_suffix("orda"), orders):
        yield cur, aov * per_customer / churn


def _receivables(c: Current) -> Iterator[Sample]:
    return _nonzero_amounts(c, "recv")


def _overdue(c: Current) -> Iterator[Sample]:
    return _one(c.zsets[Field.OVERDUE].at_or_below)


def _users_active(t: Totals) -> Iterator[Sample]:
    return _one(t.of(Field.distinct(Field.USERS)))


def _activities(t: Totals) -> Iterator[Sample]:
    return _per_label(t.by_suffix("act"))


def _at_risk(c: Current) -> Iterator[Sample]:
    z = c.zsets[Field.AT_RISK]
    # Scores are the moment each customer falls under the threshold: those still ahead count.
    return _one(z.size - z.at_or_below)


CORE_METRICS: tuple[Metric, ...] = (
    Metric(
        "crm_window_events",
        "Valid, non-duplicate events of each type whose occurred_at is in the window.",
        ("type",),
        _window_events,
    ),
    Metric("crm_leads_created", "lead.created count, by capped lead_source.", ("lead_source",), _leads_created),
    Metric("crm_lead_conversion_ratio", "lead.converted count / lead.created count.", (), _conversion),
    Metric("crm_deals_won", "deal.won count.", (), _deals_won),
    Metric("crm_deal_win_ratio", "won / (won + lost).", (), _win_ratio),
    Metric("crm_deal_won_amount", "Sum of amount of won deals, per currency.", ("currency",), _won_amount),
    Metric("crm_deal_size_average", "Won amount / won count, per currency.", ("currency",), _deal_size),
    Metric(
        "crm_sales_cycle_seconds_average",
        "Mean of won occurred_at - deal creation time (deal_created_at, else the stored deal.created), "
        "over won deals whose creation is known.",
        (),
        _sales_cycle,
    ),
    Metric(
        "crm_first_response_seconds",
        "Quantiles 0.5/0.9/0.99 of first public agent answer - ticket opening, over tickets whose "
        "first answer is in the window (relative error <= 1%).",
        ("quantile",),
        _fr_quantiles,
    ),
    Metric("crm_first_response_seconds_average", "Mean first response time over the same tickets.", (), _fr_average),
    Metric(
        "crm_first_response_sla_breach_ratio",
        "Share of those first responses slower than the SLA of the ticket's priority.",
        ("priority",),
        _fr_breach,
    ),
    Metric(
        "crm_tickets_awaiting_response",
        "Tickets opened and not yet answered by a public agent answer, now.",
        ("priority",),
        _awaiting,
        windowed=False,
    ),
    Metric(
        "crm_tickets_awaiting_response_over_sla",
        "Of those, the ones already past their SLA at scrape time.",
        ("priority",),
        _awaiting_over_sla,
        windowed=False,
    ),
    Metric(
        "crm_ticket_oldest_awaiting_response_seconds",
        "Age of the oldest ticket awaiting a first response.",
        ("priority",),
        _oldest_awaiting,
        windowed=False,
    ),
    Metric("crm_nps_score", "100 x (promoters 9-10 - detractors 0-6) / responses, kind=nps.", (), _nps),
    Metric("crm_csat_ratio", "Share of kind=csat scores >= 4.", (), _csat),
    Metric("crm_ces_average", "Mean kind=ces score.", (), _ces),
    Metric("crm_survey_responses", "Survey response count, by kind.", ("kind",), _survey_responses),
)


def _m(name: str, help: str, labels: tuple[str, ...], compute: Callable[[Any], Iterable[Sample]], **kw: Any) -> Metric:
    return Metric(name, help, labels, compute, section="5.2", **kw)


CATALOG_METRICS: tuple[Metric, ...] = (
    _m("crm_lead_qualification_ratio", "lead.qualified / lead.created in the window.", (), _qualification),
    _m("crm_leads_lost", "lead.lost count, by capped reason (absent: unknown).", ("reason",), _leads_lost),
    _m(
        "crm_deals_open",
        "Deals created and not yet won or lost, now, by their latest stage (capped to the allow-list).",
        ("stage",),
        _deals_open,
        windowed=False,
    ),
    _m(
        "crm_pipeline_open_amount",
        "Sum of the created amount of those open deals, per currency, now.",
        ("currency",),
        _pipeline,
        windowed=False,
    ),
    _m(
        "crm_ticket_first_resolution_seconds",
        "Quantiles 0.5/0.9/0.99 of first ticket.resolved - opening, over tickets whose first resolution "
        "is in the window.",
        ("quantile",),
        _resolution,
    ),
    _m("crm_ticket_reopen_ratio", "ticket.reopened / ticket.resolved in the window.", (), _reopen),
    _m(
        "crm_tickets_open",
        "Backlog now: tickets opened and not resolved (a reopen puts one back), by priority.",
        ("priority",),
        _tickets_open,
        windowed=False,
    ),
    _m(
        "crm_first_response_business_seconds",
        "Quantiles 0.5/0.9/0.99 of first response time counting only business hours "
        "(CRM_KPI_BUSINESS_HOURS in CRM_KPI_BUSINESS_TIMEZONE, minus CRM_KPI_BUSINESS_HOLIDAYS).",
        ("quantile",),
        _business_fr,
    ),
    _m("crm_customers_active", "Customers acquired - customers churned, now.", (), _customers_active, windowed=False),
    _m(
        "crm_customer_churn_ratio",
        "Churned in window / active at window start (= active now - acquired in window + churned in window).",
        (),
        _churn,
    ),
    _m(
        "crm_customer_net_loss_ratio",
        "(Active at window start - active now) / active at window start.",
        (),
        _net_loss,
    ),
    _m(
        "crm_subscription_renewal_ratio",
        "subscription.renewed / subscription.renewal_due in the window.",
        (),
        _renewal,
    ),
    _m(
        "crm_customer_acquisition_cost",
        "Acquisition marketing.spend / customer.acquired count in the window, per currency.",
        ("currency",),
        _cac,
    ),
    _m(
        "crm_cost_per_lead",
        "Acquisition marketing.spend / lead.created count in the window, per currency.",
        ("currency",),
        _cost_per_lead,
    ),
    _m(
        "crm_cost_per_opportunity",
        "Acquisition marketing.spend / deal.created count in the window, per currency.",
        ("currency",),
        _cost_per_opportunity,
    ),
    _m(
        "crm_retention_cost_per_customer",
        "Retention marketing.spend / active customers at window start, per currency.",
        ("currency",),
        _retention_cost,
    ),
    _m(
        "crm_quote_order_ratio",
        "Orders in the window carrying the quote_id of a sent quote / quote.sent count in the window.",
        (),
        _quote_order,
    ),
    _m(
        "crm_order_interval_seconds_average",
        "Mean time between an order in the window and the same customer's previous order, over orders "
        "that have one within the preceding 365 days.",
        (),
        _order_interval,
    ),
    _m(
        "crm_delivery_on_time_ratio",
        "order.delivered in the window at or before the order's promised_at / deliveries in the window "
        "whose order had a promised_at.",
        (),
        _on_time,
    ),
    _m("crm_order_value_average", "Order amount / order count, per currency.", ("currency",), _order_value),
    _m(
        "crm_repeat_purchase_ratio",
        "Customers with >= 2 orders in the window / customers with >= 1 (exact distinct counts).",
        (),
        _repeat_purchase,
    ),
    _m(
        "crm_customer_lifetime_value",
        "Over the 30d window: average order value x (orders / ordering customers) x (1 / 30d churn ratio), "
        "per currency; absent when churn is 0.",
        ("currency",),
        _clv,
        windowed=False,
    ),
    _m(
        "crm_receivables_outstanding_amount",
        "Invoices issued and not yet paid, now, per currency.",
        ("currency",),
        _receivables,
        windowed=False,
    ),
    _m("crm_invoices_overdue", "Unpaid invoices whose due_at has passed, now.", (), _overdue, windowed=False),
    _m(
        "crm_crm_users_active",
        "Distinct user_id with an activity.logged in the window (exact).",
        (),
        _users_active,
    ),
    _m("crm_activities", "activity.logged count, by kind.", ("kind",), _activities),
    _m(
        "crm_customers_at_risk",
        "Customers not churned whose churn-risk points over the trailing 30 days reach the threshold "
        "(CRM_KPI_CHURN_RISK_THRESHOLD, default 4); see `crm-kpi at-risk`.",
        (),
        _at_risk,
        windowed=False,
    ),
)

METRICS: tuple[Metric, ...] = CORE_METRICS + CATALOG_METRICS


def zset_queries(now: float, sla: Mapping[str, float]) -> dict[str, float]:
    """Sorted sets the current metrics read: name -> score threshold for `at_or_below`."""
    out = {Field.awaiting(prio): now - seconds for prio, seconds in sla.items()}
    out[Field.OVERDUE] = now
    out[Field.AT_RISK] = now
    return out


def metric_names() -> tuple[str, ...]:
    """Every exported KPI metric name, in registry order."""
    return tuple(m.name for m in METRICS)
