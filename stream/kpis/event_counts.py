"""Events counted per type: the volume every other KPI is read against."""

from __future__ import annotations

from collections.abc import Iterator

from stream.kpis.registry import Metric, Sample, Tally, TallyFamily, Totals, per_label

__all__ = ["EVENTS", "METRICS", "events_of"]

EVENTS = TallyFamily("n")
"""Valid, non-duplicate events per type, at their occurred_at."""


def events_of(event_type: str) -> Tally:
    """The count of one event type (for ratios such as lead.converted / lead.created)."""
    return Tally(EVENTS.field(event_type))


def _window_events(totals: Totals) -> Iterator[Sample]:
    return per_label(EVENTS.by_label(totals))


METRICS: tuple[Metric, ...] = (
    Metric(
        "crm_window_events",
        "Valid, non-duplicate events of each type whose occurred_at is in the window.",
        ("type",),
        _window_events,
        unit="count",
        domain="events",
        core=True,
    ),
)
