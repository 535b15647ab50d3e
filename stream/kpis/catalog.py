"""The whole KPI catalog assembled from its domains: metrics, entity kinds, fold rules, read queries.

Adding a KPI means editing one domain module (its counters, state rules,
read-out and `Metric` row); this module only lists the domains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from schemas import EVENT_TYPES
from stream.events.entities import EntityKind
from stream.events.fold import FoldRules
from stream.kpis import activity, commerce, customers, event_counts, marketing, sales, satisfaction, support
from stream.kpis.registry import DistinctCount, KpiConfig, Metric

__all__ = [
    "DISTINCT_COUNTS",
    "ENTITIES",
    "METRICS",
    "UNPRUNED_SORTED_SETS",
    "fold_rules",
    "sorted_set_queries",
]

METRICS: tuple[Metric, ...] = (
    *event_counts.METRICS,
    *sales.METRICS,
    *support.METRICS,
    *satisfaction.METRICS,
    *customers.METRICS,
    *marketing.METRICS,
    *commerce.METRICS,
    *activity.METRICS,
)
"""Every KPI gauge the exporter serves, in the order of the README and the exporter's output."""

ENTITIES: tuple[EntityKind, ...] = (
    *support.ENTITIES,
    *sales.ENTITIES,
    *customers.ENTITIES,
    *commerce.ENTITIES,
)

DISTINCT_COUNTS: tuple[DistinctCount, ...] = (activity.USERS, commerce.BUYERS)
UNPRUNED_SORTED_SETS = frozenset({commerce.OVERDUE.name})
"""Current sorted sets kept however old their scores (unpaid invoices stay overdue)."""

_EVENT_COUNTERS: dict[str, Callable[[Any, KpiConfig], Iterable[tuple[str, int]]]] = {
    **sales.EVENT_COUNTERS,
    **satisfaction.EVENT_COUNTERS,
    **marketing.EVENT_COUNTERS,
    **activity.EVENT_COUNTERS,
}
_QUERIES = (support.sorted_set_queries, commerce.sorted_set_queries, customers.sorted_set_queries)


def fold_rules(config: KpiConfig) -> FoldRules:
    """What the fold counts for each event type, with these settings."""
    # Every event counts once under its type; some add domain counters (leads by source, …).
    type_fields = {event_type: event_counts.EVENTS.field(event_type) for event_type in EVENT_TYPES}
    kinds: dict[str, tuple[EntityKind, ...]] = {}
    for kind in ENTITIES:
        for event_type in kind.types:
            kinds[event_type] = (*kinds.get(event_type, ()), kind)
    return FoldRules(type_fields, dict(_EVENT_COUNTERS), dict(activity.EVENT_MEMBERS), kinds, config)


def sorted_set_queries(now_s: float, config: KpiConfig) -> dict[str, float]:
    """Sorted sets the current metrics read: name -> score threshold for `ZStat.at_or_below`."""
    out: dict[str, float] = {}
    for query in _QUERIES:
        out.update(query(now_s, config))
    return out
