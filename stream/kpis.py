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
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from stream import sketch

__all__ = [
    "METRICS",
    "QUANTILES",
    "Current",
    "Field",
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


class Totals(dict[str, int]):
    """Summed counters of one window: field -> integer."""

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


def event_fields(event: Any, lead_sources: frozenset[str]) -> Iterator[tuple[str, int]]:
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


METRICS: tuple[Metric, ...] = (
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


def zset_queries(now: float, sla: Mapping[str, float]) -> dict[str, float]:
    """Sorted sets the current metrics read: name -> score threshold for `at_or_below`."""
    return {Field.awaiting(prio): now - seconds for prio, seconds in sla.items()}


def metric_names() -> tuple[str, ...]:
    """Every exported KPI metric name, in registry order."""
    return tuple(m.name for m in METRICS)
