"""Alert rules, Grafana dashboards and docs/alerts.md, generated from one place.

    python -m deploy.monitoring          # rewrite the generated files
    python -m deploy.monitoring --check  # exit 1 if a committed file is stale
    python -m deploy.monitoring --help   # options for other scrape configs (see docs/alerts.md)

- `thresholds`: every alert threshold, in one table (`THRESHOLDS`);
- `names`: metric names, checked against the registries that serve them
  (`stream.kpis.METRICS`, `stream.worker.metrics.WorkerMetrics`, the exporter's own);
- `deployment`: the scrape targets' labels, the runbook and Grafana URLs (the options);
- `alerts`, `dashboards`: what is alerted on and what the four boards show;
- `rules`, `grafana`, `docs`: rendering to rule YAML, dashboard JSON and Markdown;
- `generate`: every generated file, and the command line.

`tests/integration/monitoring/test_rules.py` fails when the committed files differ from what this
package generates.
"""

from .alerts import ALERTS, GROUP_DASHBOARDS, GROUPS, build_alerts
from .dashboards import DASHBOARDS, PanelQuery, build_dashboards, panel_queries
from .deployment import DEFAULT_DEPLOYMENT, EXPORTER_JOB, LAG_EXPORTER_JOB, WORKER_JOB, Deployment
from .generate import ALERTS_DOC, DASHBOARDS_DIR, RULES_DIR, generate, main
from .model import Alert, Dashboard, Panel, Query
from .names import UnknownMetricError, metric_source, metrics_in
from .thresholds import THRESHOLDS, Threshold

__all__ = [
    "ALERTS",
    "ALERTS_DOC",
    "DASHBOARDS",
    "DASHBOARDS_DIR",
    "DEFAULT_DEPLOYMENT",
    "EXPORTER_JOB",
    "GROUPS",
    "GROUP_DASHBOARDS",
    "LAG_EXPORTER_JOB",
    "RULES_DIR",
    "THRESHOLDS",
    "WORKER_JOB",
    "Alert",
    "Dashboard",
    "Deployment",
    "Panel",
    "PanelQuery",
    "Query",
    "Threshold",
    "UnknownMetricError",
    "build_alerts",
    "build_dashboards",
    "generate",
    "main",
    "metric_source",
    "metrics_in",
    "panel_queries",
]
