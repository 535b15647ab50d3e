"""KPI read-outs and per-event counters (pure)."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace as E

from hypothesis import given
from hypothesis import strategies as st

from stream.kpis import METRICS, Totals, fold_rules
from stream.kpis.event_counts import events_of
from stream.kpis.registry import amount_micros, cap_label
from stream.kpis.satisfaction import CES_TOTAL, CSAT_SATISFIED, RESPONSES_BY_KIND
from tests.support.config import kpi_config

BY_NAME = {m.name: m for m in METRICS}
SOURCES = frozenset({"web", "ads"})
RULES = fold_rules(kpi_config(lead_sources="web,ads"))


def event_fields(event: E) -> list[tuple[str, int]]:
    """The counters one event adds at its time, as the fold sees them."""
    extra = RULES.extra_counters.get(event.type)
    return [(RULES.type_fields[event.type], 1), *(extra(event, RULES.config) if extra else ())]


def read(name: str, totals: dict[str, int]) -> dict[tuple[str, ...], float]:
    return dict(BY_NAME[name].compute(Totals(totals)))


def test_zero_denominators_export_nothing() -> None:
    for name in (
        "crm_lead_conversion_ratio",
        "crm_deal_win_ratio",
        "crm_nps_score",
        "crm_csat_ratio",
        "crm_ces_average",
        "crm_sales_cycle_seconds_average",
        "crm_first_response_seconds_average",
        "crm_first_response_seconds",
        "crm_first_response_sla_breach_ratio",
        "crm_deal_size_average",
    ):
        assert read(name, {}) == {}, name


@given(st.lists(st.integers(min_value=0, max_value=10), min_size=1, max_size=200))
def test_nps_formula(scores: list[int]) -> None:
    fields: dict[str, int] = {}
    for s in scores:
        for f, v in event_fields(E(type="survey.submitted", kind="nps", score=s)):
            fields[f] = fields.get(f, 0) + v
    promoters = sum(s >= 9 for s in scores)
    detractors = sum(s <= 6 for s in scores)
    assert read("crm_nps_score", fields)[()] == 100 * (promoters - detractors) / len(scores)
    assert read("crm_survey_responses", fields) == {("nps",): len(scores)}


def test_csat_ces_and_ratios() -> None:
    t = {
        RESPONSES_BY_KIND.field("csat"): 4,
        CSAT_SATISFIED.code: 3,
        RESPONSES_BY_KIND.field("ces"): 2,
        CES_TOTAL.code: 9,
        events_of("lead.created").code: 8,
        events_of("lead.converted").code: 2,
        events_of("deal.won").code: 3,
        events_of("deal.lost").code: 1,
    }
    assert read("crm_csat_ratio", t) == {(): 0.75}
    assert read("crm_ces_average", t) == {(): 4.5}
    assert read("crm_lead_conversion_ratio", t) == {(): 0.25}
    assert read("crm_deal_win_ratio", t) == {(): 0.75}
    assert read("crm_deals_won", t) == {(): 3}


def test_amounts_are_exact_per_currency() -> None:
    fields: dict[str, int] = {}
    for amount, cur in [("0.1", "EUR"), ("0.2", "EUR"), ("1000000.35", "USD")]:
        ev = E(type="deal.won", amount=Decimal(amount), currency=cur)
        for f, v in event_fields(ev):
            fields[f] = fields.get(f, 0) + v
    won = read("crm_deal_won_amount", fields)
    assert won == {("EUR",): 0.3, ("USD",): 1000000.35}
    assert read("crm_deal_size_average", fields) == {("EUR",): 0.15, ("USD",): 1000000.35}
    assert amount_micros(Decimal("1.0000005")) == 1000000  # banker's rounding past 6 decimals


def test_lead_source_is_capped() -> None:
    assert cap_label("web", SOURCES) == "web"
    assert cap_label("tiktok", SOURCES) == "other"
    assert cap_label(None, SOURCES) == "unknown"


def test_every_metric_is_named_once_and_prefixed() -> None:
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names))
    assert all(n.startswith("crm_") for n in names)
