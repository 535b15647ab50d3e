"""The KPI samples for people: rows for `crm-kpi kpis --json`, a rich table for `crm-kpi kpis` and the demo."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from stream.exporter.collector import kpi_samples
from stream.store import Snapshot

__all__ = ["kpi_rows", "kpi_table"]


def kpi_rows(snap: Snapshot) -> list[dict[str, Any]]:
    """Every series as {'metric', 'labels', 'value'} (the --json output)."""
    return [{"metric": name, "labels": labels, "value": value} for name, labels, value in kpi_samples(snap)]


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.2f}"


def kpi_table(snap: Snapshot, title: str = "CRM KPIs") -> Table:
    """A rich table: one row per metric and non-window labels, one column per window."""
    windows = list(snap.windows)
    table = Table(title=title, show_lines=False)
    table.add_column("metric", style="cyan", no_wrap=True)
    table.add_column("labels", style="magenta")
    for w in windows:
        table.add_column(w, justify="right")
    table.add_column("now", justify="right")
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for item in kpi_rows(snap):
        labels = dict(item["labels"])
        window = labels.pop("window", "now")
        key = (item["metric"], ",".join(f"{k}={v}" for k, v in labels.items()))
        rows.setdefault(key, {})[window] = _fmt(item["value"])
    for (metric, label_text), cells in rows.items():
        table.add_row(metric, label_text, *(cells.get(w, "") for w in [*windows, "now"]))
    return table
