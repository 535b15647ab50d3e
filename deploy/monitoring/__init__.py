"""Alert rules, Grafana dashboards and docs/alerts.md, generated from one place.

    python -m deploy.monitoring          # rewrite the generated files
    python -m deploy.monitoring --check  # exit 1 if a committed file is stale

- `thresholds`: every alert threshold, in one table (`THRESHOLDS`);
- `names`: metric names, checked against the registries that serve them
  (`stream.kpis.METRICS`, `stream.opmetrics.WorkerMetrics`, the exporter's own);
- `alerts`, `dashboards`: what is alerted on and what the four boards show;
- `rules`, `grafana`, `docs`: rendering to rule YAML, dashboard JSON and Markdown;
- `generate`: every generated file, and the command line.

`tests/test_rules.py` fails when the committed files differ from what this
package generates.
"""

from .alerts import ALERTS, EXPORTER_JOB, GROUPS, WORKER_JOB
from .dashboards import DASHBOARDS, PanelQuery, panel_queries
from .generate import ALERTS_DOC, DASHBOARDS_DIR, RULES_DIR, generate, main
from .model import Alert, Dashboard, Panel, Query
from .names import UnknownMetricError, metric_source, metrics_in
from .thresholds import THRESHOLDS, Threshold

__all__ = [
    "ALERTS",
    "ALERTS_DOC",
    "DASHBOARDS",
    "DASHBOARDS_DIR",
    "EXPORTER_JOB",
    "GROUPS",
    "RULES_DIR",
    "THRESHOLDS",
    "WORKER_JOB",
    "Alert",
    "Dashboard",
    "Panel",
    "PanelQuery",
    "Query",
    "Threshold",
    "UnknownMetricError",
    "generate",
    "main",
    "metric_source",
    "metrics_in",
    "panel_queries",
]
