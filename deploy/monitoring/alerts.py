"""The alert definitions: KPI alerts on the exporter's gauges, pipeline alerts on the workers.

Thresholds come from `thresholds.THRESHOLDS`, metric names from the registries
(`names`), the scrape targets' labels from the `Deployment`. Each alert's runbook
is the section of docs/runbooks.md named after it; each alert links to the board
of its rule group (`GROUP_DASHBOARDS`).

Summaries are static text (labels, never `$value`), so a notification about one
alert keeps its title while the value moves; descriptions carry the values.
"""

from __future__ import annotations

from .deployment import DEFAULT_DEPLOYMENT, Deployment
from .model import Alert
from .names import exporter_metric, kpi_metric, lag_exporter_metric, metrics_in, worker_metric
from .thresholds import SLA, THRESHOLDS, threshold, threshold_duration, threshold_percent

__all__ = ["ALERTS", "GROUPS", "GROUP_DASHBOARDS", "build_alerts"]

# Rule groups (deploy/prometheus/rules/<group>.yml) -> uid of the board their alerts link to.
GROUP_DASHBOARDS = {
    "pipeline": "crm-kpi-pipeline-health",
    "support": "crm-kpi-support-sla",
    "churn": "crm-kpi-satisfaction-retention",
    "satisfaction": "crm-kpi-satisfaction-retention",
    "funnel": "crm-kpi-sales-funnel",
}
GROUPS = tuple(GROUP_DASHBOARDS)


def in_window(name: str, window: str, **labels: str) -> str:
    """PromQL selector of a KPI series in one window: `name{label="value", window="24h"}`."""
    matchers = [*(f'{label}="{value}"' for label, value in labels.items()), f'window="{window}"']
    return f"{name}{{{', '.join(matchers)}}}"


def day_against_week(name: str, comparison: str, baseline: str, min_volume: str, volume: str, **label: str) -> str:
    """PromQL: a KPI over 24h `comparison` a `baseline` built on its own 7d window, once the
    24h `volume` series (picked by one `label`) reaches `min_volume`: a quiet day cannot alert."""
    ((label_name, _),) = label.items()
    return (
        f"{in_window(name, '24h')}\n  {comparison} ignoring(window) {baseline}\n"
        f"and ignoring(window, {label_name})\n  {in_window(volume, '24h', **label)} >= {min_volume}"
    )


def _support_alerts() -> tuple[Alert, ...]:
    breach_ratio = kpi_metric("crm_first_response_sla_breach_ratio")
    over_sla = kpi_metric("crm_tickets_awaiting_response_over_sla")
    oldest = kpi_metric("crm_ticket_oldest_awaiting_response_seconds")
    critical = threshold("awaiting_critical_priorities")
    other = "|".join(p for p in SLA if p not in critical.split("|"))
    assert set(critical.split("|")) <= set(SLA), critical
    breach_window = threshold("sla_breach_window")
    return (
        Alert(
            "CrmKpiFirstResponseSlaBreachRatioHigh",
            "support",
            f"{in_window(breach_ratio, breach_window)} > {threshold('sla_breach_ratio')}",
            "15m",
            "warning",
            f"{{{{ $labels.priority }}}} tickets: over {threshold_percent('sla_breach_ratio')} of first"
            f" responses missed the SLA over {breach_window}.",
            "Of the {{ $labels.priority }} tickets first answered in the last"
            f" {breach_window}, {{{{ $value | humanizePercentage }}}} were answered later than the"
            f" SLA of their priority (threshold {threshold_percent('sla_breach_ratio')}).",
            ("sla_breach_window", "sla_breach_ratio"),
        ),
        *(
            Alert(
                "CrmKpiTicketsAwaitingOverSla",
                "support",
                f'{over_sla}{{priority=~"{priorities}"}} > {threshold("awaiting_over_sla_count")}',
                for_,
                severity,
                "{{ $labels.priority }} tickets await a first response past their SLA.",
                "{{ $value }} {{ $labels.priority }} tickets were opened longer ago than their"
                " priority's SLA and still have no public answer by an agent. See"
                f" {oldest} for the oldest one's age.",
                ("awaiting_critical_priorities", "awaiting_over_sla_count"),
            )
            for priorities, severity, for_ in ((critical, "critical", "1m"), (other, "warning", "15m"))
        ),
    )


def _churn_alerts() -> tuple[Alert, ...]:
    churn = kpi_metric("crm_customer_churn_ratio")
    events = kpi_metric("crm_window_events")
    window = threshold("churn_window")
    return (
        Alert(
            "CrmKpiChurnRatioHigh",
            "churn",
            f"{in_window(churn, window)} > {threshold('churn_ratio')}",
            "1h",
            "warning",
            f"Customer churn over {window} is above {threshold_percent('churn_ratio')}.",
            f"{{{{ $value | humanizePercentage }}}} of the customers active {window} ago"
            f" have churned since (threshold {threshold_percent('churn_ratio')}).",
            ("churn_window", "churn_ratio"),
        ),
        Alert(
            "CrmKpiChurnSpike",
            "churn",
            day_against_week(
                churn,
                ">",
                f"{threshold('churn_spike_factor')} * {in_window(churn, '7d')} / 7",
                threshold("churn_spike_min_churned"),
                events,
                type="customer.churned",
            ),
            "1h",
            "warning",
            "Churn over 24h spikes against its 7-day baseline.",
            "The 24h churn ratio ({{ $value | humanizePercentage }}) is over"
            f" {threshold('churn_spike_factor')} times the daily average of the 7d churn ratio, with at"
            f" least {threshold('churn_spike_min_churned')} customers churned in 24h.",
            ("churn_spike_factor", "churn_spike_min_churned"),
        ),
    )


def _satisfaction_alerts() -> tuple[Alert, ...]:
    nps = kpi_metric("crm_nps_score")
    csat = kpi_metric("crm_csat_ratio")
    surveys = kpi_metric("crm_survey_responses")
    csat_window = threshold("csat_window")
    return (
        Alert(
            "CrmKpiNpsDrop",
            "satisfaction",
            day_against_week(
                nps,
                "<",
                f"({in_window(nps, '7d')} - {threshold('nps_drop_points')})",
                threshold("nps_min_responses"),
                surveys,
                kind="nps",
            ),
            "1h",
            "warning",
            f"NPS over 24h fell more than {threshold('nps_drop_points')} points below its 7-day baseline.",
            'The 24h NPS ({{ $value | printf "%.0f" }}) is more than'
            f" {threshold('nps_drop_points')} points below the 7d NPS, over at least"
            f" {threshold('nps_min_responses')} responses.",
            ("nps_drop_points", "nps_min_responses"),
        ),
        Alert(
            "CrmKpiCsatLow",
            "satisfaction",
            f"{in_window(csat, csat_window)} < {threshold('csat_ratio')}\nand ignoring(kind)\n"
            f"  {in_window(surveys, csat_window, kind='csat')} >= {threshold('csat_min_responses')}",
            "1h",
            "warning",
            f"CSAT over {csat_window} is below {threshold_percent('csat_ratio')}.",
            "Only {{ $value | humanizePercentage }} of the CSAT answers"
            f" over {csat_window}"
            f" are satisfied (4 or 5), below {threshold_percent('csat_ratio')}, over at least"
            f" {threshold('csat_min_responses')} responses.",
            ("csat_window", "csat_ratio", "csat_min_responses"),
        ),
    )


def _funnel_alerts() -> tuple[Alert, ...]:
    conversion = kpi_metric("crm_lead_conversion_ratio")
    events = kpi_metric("crm_window_events")
    return (
        Alert(
            "CrmKpiLeadConversionDrop",
            "funnel",
            day_against_week(
                conversion,
                "<",
                f"{threshold('conversion_drop_factor')} * {in_window(conversion, '7d')}",
                threshold("conversion_min_leads"),
                events,
                type="lead.created",
            ),
            "1h",
            "warning",
            f"Lead conversion over 24h fell below {threshold('conversion_drop_factor')} times its 7-day level.",
            "The 24h lead conversion ratio ({{ $value | humanizePercentage }}) is below"
            f" {threshold('conversion_drop_factor')} times the 7d ratio, over at least"
            f" {threshold('conversion_min_leads')} leads created in 24h.",
            ("conversion_drop_factor", "conversion_min_leads"),
        ),
    )


def _pipeline_alerts(deployment: Deployment) -> tuple[Alert, ...]:
    processed = worker_metric("crm_events_processed_total")
    invalid = worker_metric("crm_events_invalid_total")
    consumer_lag = worker_metric("crm_kafka_consumer_lag")
    event_lag = worker_metric("crm_event_lag_seconds")
    batch_buckets = worker_metric("crm_batch_seconds_bucket")
    redis_errors = worker_metric("crm_redis_errors_total")
    redis_rewinds = worker_metric("crm_redis_rewinds_total")
    log_mismatch = worker_metric("crm_kafka_log_mismatch")
    history_gap = worker_metric("crm_kpi_history_gap_records")
    redis_up = exporter_metric("crm_exporter_redis_up")
    misconfigured = worker_metric("crm_worker_misconfigured")
    healthy = worker_metric("crm_worker_healthy")
    group_lag = deployment.lag_exporter(lag_exporter_metric("crm_kafka_group_lag"))
    broker_up = deployment.lag_exporter(lag_exporter_metric("crm_kafka_broker_up"))
    quiet = threshold("no_events_period")
    return (
        Alert(
            "CrmKpiWorkerDown",
            "pipeline",
            f"{deployment.workers_up} == 0",
            "2m",
            "critical",
            "crm-kpi worker {{ $labels.instance }} is down.",
            "Prometheus has not been able to scrape the crm-kpi worker at {{ $labels.instance }}"
            " for 2 minutes. Its partitions are rebalanced to the other workers; if none are"
            " left, KPIs stop updating.",
        ),
        Alert(
            "CrmKpiWorkersAbsent",
            "pipeline",
            f"absent({deployment.workers_up})",
            "5m",
            "critical",
            "No crm-kpi worker is known to Prometheus.",
            f"Prometheus has had no target matching {deployment.workers_up} for 5 minutes (service"
            " discovery finds no worker): nothing consumes the CRM topics and the KPIs are frozen.",
        ),
        Alert(
            "CrmKpiExporterDown",
            "pipeline",
            f"{deployment.exporters_up} == 0",
            "2m",
            "critical",
            "crm-kpi exporter {{ $labels.instance }} is down.",
            "Prometheus has not been able to scrape the KPI exporter at {{ $labels.instance }}"
            " for 2 minutes: every board is blank and the KPI alerts cannot fire.",
        ),
        Alert(
            "CrmKpiExporterRedisDown",
            "pipeline",
            f"{redis_up} == 0",
            "2m",
            "critical",
            "crm-kpi exporter {{ $labels.instance }} cannot read Redis.",
            "The exporter at {{ $labels.instance }} has failed to read the KPIs from Redis for"
            " 2 minutes; it serves no KPI series.",
        ),
        Alert(
            "CrmKpiConsumerLagHigh",
            "pipeline",
            f"sum by (topic) (max by (topic, partition) ({consumer_lag})) > {threshold('consumer_lag_records')}",
            "10m",
            "warning",
            f"Workers are over {threshold('consumer_lag_records')} records behind on {{{{ $labels.topic }}}}.",
            "The workers are {{ $value }} records behind on topic {{ $labels.topic }}"
            f" (threshold {threshold('consumer_lag_records')}) for 10 minutes: the KPIs lag reality.",
            ("consumer_lag_records",),
        ),
        Alert(
            "CrmKpiConsumerGroupLagHigh",
            "pipeline",
            f"sum by (group, topic) (max by (group, topic, partition) ({group_lag}))"
            f" > {threshold('consumer_lag_records')}",
            "10m",
            "warning",
            f"The broker counts over {threshold('consumer_lag_records')} records of {{{{ $labels.topic }}}}"
            " not yet consumed by the workers.",
            "Group {{ $labels.group }} has {{ $value }} records of {{ $labels.topic }} that it has not"
            f" committed (threshold {threshold('consumer_lag_records')}) for 10 minutes, as the broker"
            " reports it: this holds even when every worker is dead or stuck.",
            ("consumer_lag_records",),
        ),
        Alert(
            "CrmKpiLagExporterBrokerDown",
            "pipeline",
            f"{broker_up} == 0",
            "5m",
            "warning",
            "The lag exporter {{ $labels.instance }} cannot read offsets from Kafka.",
            "crm-kpi lag-exporter at {{ $labels.instance }} has failed to read the group's committed and"
            " end offsets from the brokers for 5 minutes: consumer-group lag is unknown.",
        ),
        Alert(
            "CrmKpiEventLagHigh",
            "pipeline",
            f"{event_lag} > {threshold('event_lag_seconds')}",
            "10m",
            "warning",
            f"Worker {{{{ $labels.instance }}}} is over {threshold_duration('event_lag_seconds')} behind event time.",
            "The newest event applied by the worker at {{ $labels.instance }} occurred"
            " {{ $value | humanizeDuration }} ago"
            f" (threshold {threshold_duration('event_lag_seconds')}) for 10 minutes.",
            ("event_lag_seconds",),
        ),
        Alert(
            "CrmKpiDeadLetterRateHigh",
            "pipeline",
            f"(\n  sum(rate({invalid}[5m]))\n  /\n  (sum(rate({invalid}[5m]))"
            f" + (sum(rate({processed}[5m])) or vector(0)))\n) > {threshold('dead_letter_ratio')}\n"
            f"and\nsum(rate({invalid}[5m])) > {threshold('dead_letter_min_rate')}",
            "10m",
            "warning",
            f"Over {threshold_percent('dead_letter_ratio')} of consumed records go to the dead-letter topic.",
            "Over the last 5 minutes {{ $value | humanizePercentage }} of the records consumed"
            f" were invalid and dead-lettered (threshold {threshold_percent('dead_letter_ratio')})"
            " for 10 minutes. A producer is sending bad events.",
            ("dead_letter_ratio", "dead_letter_min_rate"),
        ),
        Alert(
            "CrmKpiNoEvents",
            "pipeline",
            f"(sum(rate({processed}[{quiet}])) or vector(0)) == 0\nand on()\nsum({deployment.workers_up}) > 0",
            "5m",
            "warning",
            f"No valid CRM event processed for {quiet}.",
            f"The workers are up but have applied no valid event for {quiet} (plus 5 minutes):"
            " producers stopped publishing, or publish to other topics.",
            ("no_events_period",),
        ),
        Alert(
            "CrmKpiBatchLatencyHigh",
            "pipeline",
            f"histogram_quantile(0.99, sum by (job, le) (rate({batch_buckets}[5m])))"
            f" > {threshold('batch_p99_seconds')}",
            "15m",
            "warning",
            f"Worker batch p99 is over {threshold('batch_p99_seconds')}s.",
            "99% of worker batches take up to {{ $value | humanizeDuration }}"
            f" (threshold {threshold('batch_p99_seconds')}s) for 15 minutes: Redis is slow or batches are"
            " too big.",
            ("batch_p99_seconds",),
        ),
        Alert(
            "CrmKpiRedisErrors",
            "pipeline",
            f"rate({redis_errors}[5m]) > {threshold('redis_errors_rate')}",
            "5m",
            "warning",
            "Worker {{ $labels.instance }} gets Redis errors.",
            "The worker at {{ $labels.instance }} has had failing Redis calls for 5 minutes"
            ' ({{ $value | printf "%.2f" }}/s). It pauses and retries: nothing is lost, but'
            " the KPIs stop moving.",
            ("redis_errors_rate",),
        ),
        Alert(
            "CrmKpiPartitionLogMismatch",
            "pipeline",
            f"max by (topic, partition, reason) ({log_mismatch}) == 1",
            "1m",
            "critical",
            "Partition {{ $labels.topic }}:{{ $labels.partition }} is paused: its Kafka log is not the one"
            " the KPIs counted.",
            "The log of {{ $labels.topic }}:{{ $labels.partition }} does not hold the records Redis's"
            " applied offset counts ({{ $labels.reason }}): the topic was recreated or truncated. The"
            " workers paused the partition and skip nothing; its new events are not in the KPIs until"
            " an operator runs `crm-kpi offsets reset`.",
        ),
        Alert(
            "CrmKpiHistoryIncomplete",
            "pipeline",
            f"max by (topic, partition) ({history_gap}) > 0",
            "0m",
            "warning",
            "KPI windows miss records of {{ $labels.topic }}:{{ $labels.partition }} for good.",
            "{{ $value | humanize }} records of {{ $labels.topic }}:{{ $labels.partition }} will never be in the KPIs:"
            " Kafka's retention deleted them before they were applied, Redis lost them with its data, or"
            " an offsets reset skipped them. Windows covering them stay incomplete until the longest"
            " window has passed.",
        ),
        Alert(
            "CrmKpiRedisRewound",
            "pipeline",
            f"sum by (job, instance) (increase({redis_rewinds}[15m])) > 0",
            "0m",
            "warning",
            "Redis lost applied writes; worker {{ $labels.instance }} re-applied them from Kafka.",
            "Redis's applied offsets went back on partitions of the worker at {{ $labels.instance }} in the last"
            " 15 minutes (a restart from an older snapshot or an empty Redis, a promoted replica, a restore). The"
            " worker re-applied the records Kafka still holds: the figures are exact again unless"
            " CrmKpiHistoryIncomplete fires too.",
        ),
        Alert(
            "CrmKpiWorkerMisconfigured",
            "pipeline",
            f"{misconfigured} == 1",
            "1m",
            "critical",
            "crm-kpi worker {{ $labels.instance }} is refused by Kafka or Redis.",
            "The worker at {{ $labels.instance }} has been refused for a minute in a way no retry"
            " fixes: a wrong password, a certificate that does not verify, or a missing ACL right."
            " It consumes nothing and retries every 30 seconds; its log says what was refused in"
            " one ERROR line.",
        ),
        Alert(
            "CrmKpiWorkerUnhealthy",
            "pipeline",
            f"{healthy} == 0",
            "5m",
            "warning",
            "crm-kpi worker {{ $labels.instance }} cannot make progress.",
            "The worker at {{ $labels.instance }} has been unable to use Kafka or Redis for 5"
            " minutes (crm_worker_dependency_up says which). It waits and retries: nothing is"
            " lost, but the KPIs stop moving.",
        ),
    )


def build_alerts(deployment: Deployment = DEFAULT_DEPLOYMENT) -> tuple[Alert, ...]:
    """Every alert, in the order of docs/alerts.md; each checked for known metrics,
    thresholds and rule group, and for a static summary."""
    alerts = (
        *_support_alerts(),
        *_churn_alerts(),
        *_satisfaction_alerts(),
        *_funnel_alerts(),
        *_pipeline_alerts(deployment),
    )
    for alert in alerts:
        metrics_in(alert.expr)
        assert alert.group in GROUPS, (alert.name, alert.group)
        unknown = set(alert.thresholds) - set(THRESHOLDS)
        assert not unknown, (alert.name, unknown)
        assert "$value" not in alert.summary, (alert.name, alert.summary)
    return alerts


# The alerts of the compose stack (the committed rule files).
ALERTS: tuple[Alert, ...] = build_alerts()
