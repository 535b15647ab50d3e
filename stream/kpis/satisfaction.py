"""Satisfaction KPIs: NPS, CSAT and CES from survey.submitted, counted per event (no entity state)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from stream.kpis.registry import KpiConfig, Metric, Sample, Tally, TallyFamily, Totals, per_label, ratio

__all__ = ["EVENT_COUNTERS", "METRICS"]

RESPONSES_BY_KIND = TallyFamily("sv")  # survey responses by kind (nps, csat, ces)
NPS_PROMOTERS = Tally("nps_pro")  # NPS 9-10
NPS_DETRACTORS = Tally("nps_det")  # NPS 0-6
CSAT_SATISFIED = Tally("csat_ok")  # CSAT >= 4
CES_TOTAL = Tally("ces_sum")  # summed CES scores


def _survey(event: Any, config: KpiConfig) -> Iterator[tuple[str, int]]:
    score, kind = event.score, event.kind
    yield RESPONSES_BY_KIND.field(kind), 1
    if kind == "nps":
        if score >= 9:
            yield NPS_PROMOTERS.code, 1
        elif score <= 6:
            yield NPS_DETRACTORS.code, 1
    elif kind == "csat":
        if score >= 4:
            yield CSAT_SATISFIED.code, 1
    else:
        yield CES_TOTAL.code, score


EVENT_COUNTERS = {"survey.submitted": _survey}
"""Counters one valid, new event adds to the bucket of its occurred_at, by event type."""


def _nps(t: Totals) -> Iterator[Sample]:
    n = Tally(RESPONSES_BY_KIND.field("nps")).of(t)
    return ratio(100 * (NPS_PROMOTERS.of(t) - NPS_DETRACTORS.of(t)), n)


def _csat(t: Totals) -> Iterator[Sample]:
    return ratio(CSAT_SATISFIED.of(t), Tally(RESPONSES_BY_KIND.field("csat")).of(t))


def _ces(t: Totals) -> Iterator[Sample]:
    return ratio(CES_TOTAL.of(t), Tally(RESPONSES_BY_KIND.field("ces")).of(t))


def _survey_responses(t: Totals) -> Iterator[Sample]:
    return per_label(RESPONSES_BY_KIND.by_label(t))


METRICS: tuple[Metric, ...] = (
    Metric(
        "crm_nps_score",
        "100 x (promoters 9-10 - detractors 0-6) / responses, kind=nps.",
        (),
        _nps,
        unit="score",
        domain="satisfaction",
        core=True,
    ),
    Metric(
        "crm_csat_ratio",
        "Share of kind=csat scores >= 4.",
        (),
        _csat,
        unit="ratio",
        domain="satisfaction",
        core=True,
    ),
    Metric("crm_ces_average", "Mean kind=ces score.", (), _ces, unit="score", domain="satisfaction", core=True),
    Metric(
        "crm_survey_responses",
        "Survey response count, by kind.",
        ("kind",),
        _survey_responses,
        unit="count",
        domain="satisfaction",
        core=True,
    ),
)
