"""CRM adoption KPIs: logged activities by kind and distinct active CRM users (exact)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from stream.kpis.registry import DistinctCount, KpiConfig, Metric, Sample, TallyFamily, Totals, one, per_label

__all__ = ["EVENT_COUNTERS", "EVENT_MEMBERS", "METRICS", "USERS"]

ACTIVITIES_BY_KIND = TallyFamily("act")
USERS = DistinctCount("users")  # CRM users with an activity in the window


def _activity(event: Any, config: KpiConfig) -> Iterator[tuple[str, int]]:
    yield ACTIVITIES_BY_KIND.field(event.kind), 1


EVENT_COUNTERS = {"activity.logged": _activity}
"""Counters one valid, new event adds to the bucket of its occurred_at, by event type."""

EVENT_MEMBERS = {"activity.logged": lambda e: (USERS.name, e.user_id)}
"""Members one event adds to an exact distinct count, by event type: (distinct name, member)."""


def _users_active(t: Totals) -> Iterator[Sample]:
    return one(USERS.distinct(t))


def _activities(t: Totals) -> Iterator[Sample]:
    return per_label(ACTIVITIES_BY_KIND.by_label(t))


METRICS: tuple[Metric, ...] = (
    Metric(
        "crm_crm_users_active",
        "Distinct user_id with an activity.logged in the window (exact).",
        (),
        _users_active,
        unit="count",
        domain="activity",
    ),
    Metric(
        "crm_activities",
        "activity.logged count, by kind.",
        ("kind",),
        _activities,
        unit="count",
        domain="activity",
    ),
)
