"""What an alert and a dashboard are, before they are rendered to Prometheus and Grafana files."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Alert", "Dashboard", "Panel", "Query"]


@dataclass(frozen=True)
class Alert:
    """One Prometheus alerting rule; `group` names its rule file (`<group>.yml`)."""

    name: str
    group: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    thresholds: tuple[str, ...] = ()  # keys of THRESHOLDS the rule uses, for docs/alerts.md
    extra_labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel and its legend (Grafana's `__auto` when empty)."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 8
    description: str = ""  # empty: the help text of the first metric the panel reads


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
