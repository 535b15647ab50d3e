"""Every alert threshold, in one table; and the worker defaults the alerts and boards build on.

Change a value here, run `python -m deploy.monitoring` and commit what it rewrites;
docs/alerts.md lists the table with the alerts that use each entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from stream.events.windows import format_duration, make_windows
from stream.kpis import QUANTILES
from stream.settings import Settings

__all__ = [
    "P90",
    "SLA",
    "THRESHOLDS",
    "WINDOWS",
    "Threshold",
    "setting_default",
    "threshold",
    "threshold_duration",
    "threshold_percent",
]


def setting_default(name: str) -> Any:
    """A worker setting's built-in default (not the environment's value)."""
    factory = Settings.model_fields[name].default_factory
    assert factory is not None, name
    return cast(Callable[[], Any], factory)()


# KPI window labels and first-response SLAs per priority, as the worker ships them.
WINDOWS = tuple(w.label for w in make_windows(setting_default("windows")))
SLA: dict[str, float] = dict(setting_default("sla"))
assert WINDOWS == ("1h", "24h", "7d", "30d"), WINDOWS
P90 = str(0.9)
assert 0.9 in QUANTILES


@dataclass(frozen=True)
class Threshold:
    value: float | str
    unit: str
    meaning: str

    def __str__(self) -> str:
        return f"{self.value:g}" if isinstance(self.value, float | int) else self.value


THRESHOLDS: dict[str, Threshold] = {
    # Slow responses
    "sla_breach_window": Threshold("24h", "window", "KPI window of the per-priority SLA breach ratio"),
    "sla_breach_ratio": Threshold(0.2, "ratio", "share of first responses slower than their priority's SLA"),
    "awaiting_critical_priorities": Threshold(
        "urgent|high",
        "regex",
        "priorities whose tickets waiting past their SLA page (others open a ticket)",
    ),
    "awaiting_over_sla_count": Threshold(0.0, "tickets", "tickets waiting past their SLA tolerated"),
    # Churn
    "churn_window": Threshold("30d", "window", "KPI window of the churn-ratio alert"),
    "churn_ratio": Threshold(0.05, "ratio", "churned in the window / active at its start"),
    "churn_spike_factor": Threshold(2.0, "x", "24h churn ratio against the daily average of the 7d ratio"),
    "churn_spike_min_churned": Threshold(5.0, "customers", "churns in 24h before a spike can alert"),
    # Satisfaction
    "nps_drop_points": Threshold(15.0, "NPS points", "24h NPS below the 7d NPS by more than this"),
    "nps_min_responses": Threshold(20.0, "responses", "NPS responses in 24h before a drop can alert"),
    "csat_window": Threshold("24h", "window", "KPI window of the CSAT alert"),
    "csat_ratio": Threshold(0.8, "ratio", "CSAT (share of scores >= 4) below this alerts"),
    "csat_min_responses": Threshold(20.0, "responses", "CSAT responses in the window before it can alert"),
    # Funnel
    "conversion_drop_factor": Threshold(0.5, "x", "24h lead conversion below this times the 7d conversion"),
    "conversion_min_leads": Threshold(20.0, "leads", "leads created in 24h before a drop can alert"),
    # Pipeline health
    "consumer_lag_records": Threshold(10000.0, "records", "records not yet applied, per topic, all partitions"),
    "event_lag_seconds": Threshold(900.0, "s", "now - newest occurred_at seen by a worker"),
    "dead_letter_ratio": Threshold(0.05, "ratio", "dead-lettered / all records consumed, over 5m"),
    "dead_letter_min_rate": Threshold(0.05, "records/s", "dead-letter rate below this never alerts"),
    "no_events_period": Threshold("15m", "duration", "no valid event processed for this long"),
    "batch_p99_seconds": Threshold(2.5, "s", "p99 time to process one batch"),
    "redis_errors_rate": Threshold(0.0, "errors/s", "sustained failed Redis calls above this alert"),
}


def threshold(key: str) -> str:
    """A threshold as PromQL text: `0.2`, `14400`, `24h`, `urgent|high`."""
    return str(THRESHOLDS[key])


def threshold_percent(key: str) -> str:
    """A ratio threshold as a whole percentage for prose: `20%`."""
    return f"{float(threshold(key)):.0%}"


def threshold_duration(key: str) -> str:
    """A threshold in seconds as a duration for prose: `15m`."""
    return format_duration(float(threshold(key)))
