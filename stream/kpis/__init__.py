"""The KPI domain: every metric, its counters, entity state rules and read-out (pure, no I/O).

One module per business domain — `sales`, `marketing`, `support`,
`satisfaction`, `customers`, `commerce`, `activity`, plus `event_counts` —
each holding, for its KPIs, the counters it keeps, the entity states it joins,
the read-out and the `Metric` row. `registry` has the building blocks,
`catalog` assembles the domains; `sketch`, `business_hours` and `churn_risk`
are the arithmetic some KPIs share.
"""

from stream.kpis.catalog import (
    DISTINCT_COUNTS,
    ENTITIES,
    METRICS,
    UNPRUNED_SORTED_SETS,
    fold_rules,
    sorted_set_queries,
)
from stream.kpis.registry import QUANTILES, Current, KpiConfig, Metric, Totals, ZStat

__all__ = [
    "DISTINCT_COUNTS",
    "ENTITIES",
    "METRICS",
    "QUANTILES",
    "UNPRUNED_SORTED_SETS",
    "Current",
    "KpiConfig",
    "Metric",
    "Totals",
    "ZStat",
    "fold_rules",
    "sorted_set_queries",
]
