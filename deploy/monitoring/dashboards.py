"""The four Grafana boards: their panels and queries.

Their uids are stable: alerts link to them (`alerts.GROUP_DASHBOARDS`).

KPI panels read the window picked in the board's `window` variable; gauges that
are not windowed (tickets waiting now, open deals now) are read as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .deployment import DEFAULT_DEPLOYMENT, Deployment
from .model import Dashboard, Panel, Query
from .names import KPI_METRICS, exporter_metric, kpi_metric, lag_exporter_metric, metrics_in, worker_metric

__all__ = ["DASHBOARDS", "PanelQuery", "build_dashboards", "panel_queries"]

SELECTED_WINDOW = 'window="$window"'
RATE_INTERVAL = "$__rate_interval"


def kpi_panel(title: str, name: str, legend: str = "", **options: Any) -> Panel:
    """A panel of one KPI gauge, in the selected window if the gauge is windowed."""
    expr = f"{name}{{{SELECTED_WINDOW}}}" if KPI_METRICS[kpi_metric(name)].windowed else name
    return Panel(title, (Query(expr, legend),), **options)


def against_baseline_panel(title: str, name: str, **options: Any) -> Panel:
    """A KPI in the selected window beside its own 7d window, the alerts' baseline."""
    queries = (
        Query(f"{kpi_metric(name)}{{{SELECTED_WINDOW}}}", "selected window"),
        Query(f'{name}{{window="7d"}}', "7d"),
    )
    return Panel(title, queries, **options)


def summed_rate(name: str, by: str = "") -> str:
    """PromQL: the per-second rate of a worker counter over Grafana's rate interval, summed."""
    total = f"sum by ({by}) " if by else "sum"
    return f"{total}(rate({worker_metric(name)}[{RATE_INTERVAL}]))"


def _sales_funnel() -> Dashboard:
    leads = kpi_metric("crm_leads_created")
    events = kpi_metric("crm_window_events")
    return Dashboard(
        "crm-kpi-sales-funnel",
        "CRM KPIs / Sales funnel",
        "Leads, conversion, won deals and their amounts over the selected window.",
        (
            Panel("Leads created", (Query(f"sum({leads}{{{SELECTED_WINDOW}}})"),), "stat", width=6),
            kpi_panel("Lead conversion", "crm_lead_conversion_ratio", kind="stat", unit="percentunit", width=6),
            kpi_panel("Deals won", "crm_deals_won", kind="stat", width=6),
            kpi_panel("Deal win ratio", "crm_deal_win_ratio", kind="stat", unit="percentunit", width=6),
            Panel(
                "Leads by source",
                (Query(f"sum by (lead_source) ({leads}{{{SELECTED_WINDOW}}})", "{{lead_source}}"),),
                "bargauge",
                width=8,
            ),
            kpi_panel("Won amount by currency", "crm_deal_won_amount", "{{currency}}", width=8),
            kpi_panel("Average deal size", "crm_deal_size_average", "{{currency}}", width=8),
            kpi_panel("Sales cycle (mean)", "crm_sales_cycle_seconds_average", unit="s", width=8),
            against_baseline_panel(
                "Conversion: window vs 7d baseline", "crm_lead_conversion_ratio", unit="percentunit", width=8
            ),
            Panel(
                "Funnel events",
                (Query(f'{events}{{{SELECTED_WINDOW}, type=~"lead.+|deal.+"}}', "{{type}}"),),
                "bargauge",
                width=8,
            ),
            kpi_panel("Lead qualification", "crm_lead_qualification_ratio", kind="stat", unit="percentunit", width=8),
            kpi_panel("Open deals by stage", "crm_deals_open", "{{stage}}", kind="bargauge", width=8),
            kpi_panel("Open pipeline amount", "crm_pipeline_open_amount", "{{currency}}", width=8),
        ),
    )


def _support_sla() -> Dashboard:
    events = kpi_metric("crm_window_events")
    return Dashboard(
        "crm-kpi-support-sla",
        "CRM KPIs / Support and SLA",
        "First response times, SLA breaches and tickets waiting for a first answer.",
        (
            kpi_panel(
                "First response time quantiles", "crm_first_response_seconds", "p{{quantile}}", unit="s", width=12
            ),
            kpi_panel(
                "First response time (mean)", "crm_first_response_seconds_average", kind="stat", unit="s", width=6
            ),
            Panel(
                "Tickets opened",
                (Query(f'sum({events}{{{SELECTED_WINDOW}, type="ticket.opened"}})'),),
                "stat",
                width=6,
            ),
            kpi_panel(
                "SLA breach ratio by priority",
                "crm_first_response_sla_breach_ratio",
                "{{priority}}",
                unit="percentunit",
                width=12,
            ),
            kpi_panel(
                "Tickets awaiting a first response",
                "crm_tickets_awaiting_response",
                "{{priority}}",
                kind="bargauge",
                width=6,
            ),
            kpi_panel(
                "Awaiting past their SLA",
                "crm_tickets_awaiting_response_over_sla",
                "{{priority}}",
                kind="bargauge",
                width=6,
            ),
            kpi_panel(
                "Oldest ticket awaiting a first response",
                "crm_ticket_oldest_awaiting_response_seconds",
                "{{priority}}",
                unit="s",
                width=12,
            ),
            kpi_panel(
                "First resolution time", "crm_ticket_first_resolution_seconds", "p{{quantile}}", unit="s", width=12
            ),
            kpi_panel("Reopen ratio", "crm_ticket_reopen_ratio", kind="stat", unit="percentunit", width=6),
            kpi_panel("Open tickets by priority", "crm_tickets_open", "{{priority}}", kind="bargauge", width=6),
        ),
    )


def _satisfaction_retention() -> Dashboard:
    return Dashboard(
        "crm-kpi-satisfaction-retention",
        "CRM KPIs / Satisfaction and retention",
        "NPS, CSAT, CES and survey volume; churn and retention (full catalog).",
        (
            kpi_panel("NPS", "crm_nps_score", kind="stat", width=6),
            kpi_panel("CSAT", "crm_csat_ratio", kind="stat", unit="percentunit", width=6),
            kpi_panel("CES (mean, 1-7)", "crm_ces_average", kind="stat", width=6),
            kpi_panel("Survey responses", "crm_survey_responses", "{{kind}}", kind="bargauge", width=6),
            against_baseline_panel("NPS: window vs 7d baseline", "crm_nps_score", width=12),
            against_baseline_panel("CSAT: window vs 7d baseline", "crm_csat_ratio", unit="percentunit", width=12),
            kpi_panel("Churn ratio", "crm_customer_churn_ratio", unit="percentunit", width=8),
            kpi_panel("Active customers", "crm_customers_active", kind="stat", width=8),
            kpi_panel("Customers at churn risk", "crm_customers_at_risk", kind="stat", width=8),
            kpi_panel("Renewal ratio", "crm_subscription_renewal_ratio", kind="stat", unit="percentunit", width=8),
        ),
    )


def _pipeline_health(deployment: Deployment) -> Dashboard:
    batch_buckets = worker_metric("crm_batch_seconds_bucket")
    per_instance = "{{instance}}"
    return Dashboard(
        "crm-kpi-pipeline-health",
        "CRM KPIs / Pipeline health",
        "Throughput, lag, dead letters and batch latency of the workers; exporter health.",
        (
            Panel(
                "Workers up",
                (Query(f"sum({deployment.workers_up})"),),
                "stat",
                width=6,
                description="Worker replicas Prometheus scrapes successfully.",
            ),
            Panel(
                "Exporter reads Redis",
                (Query(exporter_metric("crm_exporter_redis_up"), per_instance),),
                "stat",
                width=6,
                description="1 if the exporter's last scrape read Redis.",
            ),
            Panel(
                "Exporter scrape time",
                (Query(exporter_metric("crm_exporter_scrape_seconds"), per_instance),),
                unit="s",
                width=12,
                description="Time the exporter takes to read Redis and compute the KPIs.",
            ),
            Panel(
                "Throughput by event type",
                (Query(summed_rate("crm_events_processed_total", "type"), "{{type}}"),),
                unit="ops",
                width=12,
            ),
            Panel(
                "Dead letters by reason",
                (Query(summed_rate("crm_events_invalid_total", "reason"), "{{reason}}"),),
                unit="ops",
                width=12,
            ),
            Panel(
                "Duplicates and late events",
                (
                    Query(summed_rate("crm_events_duplicate_total"), "duplicates"),
                    Query(summed_rate("crm_events_late_total"), "late"),
                ),
                unit="ops",
                width=12,
            ),
            Panel(
                "Event lag (now - newest occurred_at)",
                (Query(worker_metric("crm_event_lag_seconds"), per_instance),),
                unit="s",
                width=12,
            ),
            Panel(
                "Kafka consumer lag by topic",
                (Query(f"sum by (topic) ({worker_metric('crm_kafka_consumer_lag')})", "{{topic}}"),),
                width=12,
                description="As each worker last saw it: frozen while a worker is stuck, gone when it dies.",
            ),
            Panel(
                "Consumer-group lag by topic (from the brokers)",
                (
                    Query(
                        "sum by (topic) (max by (group, topic, partition) "
                        f"({deployment.lag_exporter(lag_exporter_metric('crm_kafka_group_lag'))}))",
                        "{{topic}}",
                    ),
                ),
                width=12,
                description="End offset - the group's committed offset, read from the brokers by crm-kpi"
                " lag-exporter: true even when every worker is dead or stuck.",
            ),
            Panel(
                "Batch latency",
                tuple(
                    Query(f"histogram_quantile({q}, sum by (le) (rate({batch_buckets}[{RATE_INTERVAL}])))", f"p{q}")
                    for q in ("0.5", "0.9", "0.99")
                ),
                unit="s",
                width=12,
            ),
            Panel(
                "Batches per second",
                (Query(summed_rate("crm_batch_seconds_count", "instance"), per_instance),),
                unit="ops",
                width=12,
            ),
            Panel(
                "Redis errors",
                (Query(summed_rate("crm_redis_errors_total", "instance"), per_instance),),
                unit="ops",
                width=12,
            ),
            Panel(
                "Logs and Redis going backwards",
                (
                    Query(f"count({worker_metric('crm_kafka_log_mismatch')} == 1) or vector(0)", "paused partitions"),
                    Query(
                        f"sum({worker_metric('crm_kpi_history_gap_records')}) or vector(0)",
                        "records missing from the windows",
                    ),
                    Query(
                        f"sum(increase({worker_metric('crm_redis_rewinds_total')}[1h])) or vector(0)",
                        "partitions Redis lost (1h)",
                    ),
                ),
                width=12,
                description="Partitions paused because their Kafka log is not the one the KPIs counted"
                " (recreated or truncated topic), records the KPIs miss for good, and partitions whose"
                " applied records Redis lost and the workers re-applied (docs/failures.md).",
            ),
        ),
    )


def build_dashboards(deployment: Deployment = DEFAULT_DEPLOYMENT) -> tuple[Dashboard, ...]:
    """The four boards; every panel query checked to read only known metrics."""
    boards = (_sales_funnel(), _support_sla(), _satisfaction_retention(), _pipeline_health(deployment))
    for board in boards:
        for panel in board.panels:
            for query in panel.queries:
                metrics_in(query.expr)
    return boards


# The boards of the compose stack (the committed dashboards).
DASHBOARDS: tuple[Dashboard, ...] = build_dashboards()


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel, flattened: for tests that run every board query."""

    dashboard: str
    panel: str
    expr: str


def panel_queries(deployment: Deployment = DEFAULT_DEPLOYMENT) -> Iterator[PanelQuery]:
    """Every PromQL query of every dashboard panel."""
    for board in build_dashboards(deployment):
        for panel in board.panels:
            for query in panel.queries:
                yield PanelQuery(board.uid, panel.title, query.expr)
