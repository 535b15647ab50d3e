"""The demo's live view: the headline KPI table and the status line (no processes here).

Values are formatted from each metric's unit (`stream.exporter.tables.format_value`),
the same formatter `crm-kpi kpis` uses.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

from rich import box
from rich.table import Table

from stream.exporter.tables import format_value, kpi_rows, unit_of
from stream.store import Snapshot

__all__ = ["HEADLINE", "headline_table", "status_line", "window_events"]

# (row title, metric, label values to match, how: "one" | "sum" over the other labels | "split" by them)
HEADLINE: tuple[tuple[str, str, dict[str, str], str], ...] = (
    ("events", "crm_window_events", {}, "sum"),
    ("leads created", "crm_leads_created", {}, "sum"),
    ("lead conversion", "crm_lead_conversion_ratio", {}, "one"),
    ("deals won", "crm_deals_won", {}, "one"),
    ("deal win ratio", "crm_deal_win_ratio", {}, "one"),
    ("won amount", "crm_deal_won_amount", {}, "split"),
    ("sales cycle (mean)", "crm_sales_cycle_seconds_average", {}, "one"),
    ("first response p50", "crm_first_response_seconds", {"quantile": "0.5"}, "one"),
    ("first response p90", "crm_first_response_seconds", {"quantile": "0.9"}, "one"),
    ("SLA breach", "crm_first_response_sla_breach_ratio", {}, "split"),
    ("tickets open (backlog)", "crm_tickets_open", {}, "sum"),
    ("awaiting first answer", "crm_tickets_awaiting_response", {}, "sum"),
    ("  of which over SLA", "crm_tickets_awaiting_response_over_sla", {}, "sum"),
    ("NPS", "crm_nps_score", {}, "one"),
    ("CSAT", "crm_csat_ratio", {}, "one"),
    ("active customers", "crm_customers_active", {}, "one"),
    ("churn ratio", "crm_customer_churn_ratio", {}, "one"),
    ("customers at risk", "crm_customers_at_risk", {}, "one"),
    ("invoices overdue", "crm_invoices_overdue", {}, "one"),
)


def _series(snap: Snapshot) -> dict[str, list[tuple[dict[str, str], str, float]]]:
    out: dict[str, list[tuple[dict[str, str], str, float]]] = defaultdict(list)
    for row in kpi_rows(snap):
        labels = dict(row["labels"])
        window = labels.pop("window", "now")
        out[row["metric"]].append((labels, window, float(row["value"])))
    return out


def headline_table(snap: Snapshot, title: str = "CRM KPIs (headline; crm-kpi kpis for all)") -> Table:
    """The demo's compact table: the headline KPIs, one column per window plus 'now'; fits 80 columns."""
    columns = [*snap.windows, "now"]
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("KPI", style="cyan", no_wrap=True)
    for c in columns:
        table.add_column(c, justify="right", no_wrap=True)
    series = _series(snap)
    for name, metric, match, how in HEADLINE:
        entries = [e for e in series.get(metric, []) if all(e[0].get(k) == v for k, v in match.items())]
        if not entries:
            continue
        unit = unit_of(metric)
        rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for labels, window, value in entries:
            rest = ",".join(v for k, v in labels.items() if k not in match)
            rows[f"{name} {rest}" if how == "split" and rest else name][window] += value
        for row_name, cells in rows.items():
            table.add_row(row_name, *(format_value(unit, cells[c]) if c in cells else "" for c in columns))
    return table


def window_events(snap: Snapshot) -> dict[str, float]:
    """Valid events per window (all types)."""
    totals: dict[str, float] = defaultdict(float)
    for _, window, value in _series(snap).get("crm_window_events", []):
        totals[window] += value
    return dict(totals)


def status_line(
    published: int,
    live: bool,
    event_time: float | None,
    customers: int,
    incidents: frozenset[str],
    remaining: float | None,
) -> str:
    """One line on the simulator: phase, events published, event time, incidents, time left."""
    when = "-" if event_time is None else datetime.fromtimestamp(event_time, UTC).strftime("%H:%M:%SZ")
    phase = "live" if live else "backfilling history"
    text = f"simulator: {phase}, {published:,} events published (event time {when}, {customers:,} customers)"
    if incidents:
        text += f", incidents: {', '.join(sorted(incidents))}"
    return text + (f" · stops in {max(0.0, remaining):.0f}s" if remaining is not None else " · Ctrl-C to stop")
