"""Marketing KPIs: what acquisition and retention spend buys (leads, opportunities, customers)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from stream.kpis.customers import CUSTOMERS_ACQUIRED, active_at_start
from stream.kpis.event_counts import events_of
from stream.kpis.registry import KpiConfig, Metric, Sample, TallyFamily, Totals, amount_micros, per_currency_ratio

__all__ = ["EVENT_COUNTERS", "METRICS"]

ACQUISITION_SPEND = TallyFamily("spa")  # µ of marketing.spend with purpose other than retention, per currency
RETENTION_SPEND = TallyFamily("spr")  # µ of marketing.spend with purpose retention, per currency

_LEAD_CREATED = events_of("lead.created")
_DEAL_CREATED = events_of("deal.created")


def _spend(event: Any, config: KpiConfig) -> Iterator[tuple[str, int]]:
    spend = RETENTION_SPEND if event.purpose == "retention" else ACQUISITION_SPEND
    yield spend.field(event.currency), amount_micros(event.amount)


EVENT_COUNTERS = {"marketing.spend": _spend}
"""Counters one valid, new event adds to the bucket of its occurred_at, by event type."""


def _cac(t: Totals) -> Iterator[Sample]:
    return per_currency_ratio(ACQUISITION_SPEND.by_label(t), CUSTOMERS_ACQUIRED.of(t))


def _cost_per_lead(t: Totals) -> Iterator[Sample]:
    return per_currency_ratio(ACQUISITION_SPEND.by_label(t), _LEAD_CREATED.of(t))


def _cost_per_opportunity(t: Totals) -> Iterator[Sample]:
    return per_currency_ratio(ACQUISITION_SPEND.by_label(t), _DEAL_CREATED.of(t))


def _retention_cost(t: Totals) -> Iterator[Sample]:
    start = active_at_start(t)
    if start > 0:
        yield from per_currency_ratio(RETENTION_SPEND.by_label(t), start)


METRICS: tuple[Metric, ...] = (
    Metric(
        "crm_customer_acquisition_cost",
        "Acquisition marketing.spend / customer.acquired count in the window, per currency.",
        ("currency",),
        _cac,
        unit="amount",
        domain="marketing",
    ),
    Metric(
        "crm_cost_per_lead",
        "Acquisition marketing.spend / lead.created count in the window, per currency.",
        ("currency",),
        _cost_per_lead,
        unit="amount",
        domain="marketing",
    ),
    Metric(
        "crm_cost_per_opportunity",
        "Acquisition marketing.spend / deal.created count in the window, per currency.",
        ("currency",),
        _cost_per_opportunity,
        unit="amount",
        domain="marketing",
    ),
    Metric(
        "crm_retention_cost_per_customer",
        "Retention marketing.spend / active customers at window start, per currency.",
        ("currency",),
        _retention_cost,
        unit="amount",
        domain="marketing",
    ),
)
