"""What the read commands print: `crm-kpi kpis`, `crm-kpi at-risk` and the demo's table.

Three forms of the same rows:

* `--json`: every series as {'metric', 'labels', 'value'} (unchanged, for machines);
* a terminal: rich tables that fit 80 columns - values formatted from each
  metric's unit (`format_value`), ids and label values never cut into look-alike
  stubs, long text wrapped;
* a pipe or file: plain tab-separated lines with raw values, one per series or
  customer, header first (`kpi_tsv`, `at_risk_tsv`), for `grep`, `cut`, `awk`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from stream.exporter.collector import kpi_samples
from stream.kpis import METRICS
from stream.kpis.registry import Unit
from stream.store import Snapshot

__all__ = [
    "at_risk_table",
    "at_risk_tsv",
    "dead_letter_table",
    "dead_letter_tsv",
    "format_duration_s",
    "format_value",
    "kpi_rows",
    "kpi_table",
    "kpi_tsv",
    "unit_of",
]

_UNITS: dict[str, Unit] = {m.name: m.unit for m in METRICS}
METRIC_LABELS: dict[str, tuple[str, ...]] = {m.name: m.all_labels for m in METRICS}


def unit_of(metric: str) -> Unit:
    """A KPI's unit from the registry (`Metric.unit`)."""
    return _UNITS[metric]


def format_duration_s(seconds: float) -> str:
    """A duration for people: 45s, 12m05s, 3h07m, 2.5d."""
    s = round(seconds)
    if s >= 86400:
        return f"{s / 86400:.1f}d"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def format_value(unit: Unit, value: float, compact: bool = False) -> str:
    """A value as its unit reads: count 1,234 · ratio 12.5% · seconds 3h07m · amount 12,345.67 · score 41.2.

    `compact` keeps table cells within 9 characters: 1.23M, 456.7k for large amounts and counts.
    """
    if compact and unit in ("amount", "count") and abs(value) >= 1e6:
        return f"{value / 1e6:,.2f}M"
    if compact and unit == "amount" and abs(value) >= 1e5:
        return f"{value / 1e3:,.1f}k"
    if unit == "ratio":
        return f"{100 * value:.1f}%"
    if unit == "seconds":
        return format_duration_s(value)
    if unit == "amount":
        return f"{value:,.2f}"
    if unit == "score":
        return f"{value:.1f}"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.2f}"


def kpi_rows(snap: Snapshot) -> list[dict[str, Any]]:
    """Every series as {'metric', 'labels', 'value'} (the --json output)."""
    return [{"metric": name, "labels": labels, "value": value} for name, labels, value in kpi_samples(snap)]


def _grouped(snap: Snapshot) -> dict[str, dict[str, dict[str, float]]]:
    """{metric: {label values joined: {window or 'now': value}}} in registry order."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for item in kpi_rows(snap):
        labels = dict(item["labels"])
        window = labels.pop("window", "now")
        text = ", ".join(labels.values())
        out.setdefault(item["metric"], {}).setdefault(text, {})[window] = float(item["value"])
    return out


_LABEL_WIDTH = 28
_VALUE_WIDTH = 9


def kpi_table(snap: Snapshot, title: str = "CRM KPIs") -> Group:
    """Each metric as a heading (name, unit, label names), then one row per label set, a column per window.

    Fits 80 columns: every block shares fixed column widths, so values line up
    down the page; label values are shown without their names (given in the
    heading) and wrap at word boundaries, values are compact ('12.35M').
    """
    columns = [*snap.windows, "now"]
    grouped = _grouped(snap)
    used = [c for c in columns if any(c in cells for rows in grouped.values() for cells in rows.values())]
    parts: list[RenderableType] = [Text(title, style="bold")]
    header = _block(used)
    header.show_header = True
    parts.append(header)
    for metric, rows in grouped.items():
        unit = unit_of(metric)
        names = [label for label in METRIC_LABELS[metric] if label != "window"]
        by = f" by {', '.join(names)}" if names else ""
        parts.append(Text.assemble((metric, "bold cyan"), (f" ({unit}){by}", "dim")))
        block = _block(used)
        for text, cells in rows.items():
            block.add_row(f"  {text}" if text else "", *(_cell(unit, cells, c) for c in used))
        parts.append(block)
    return Group(*parts)


def _block(columns: Sequence[str]) -> Table:
    table = Table(box=None, show_header=False, padding=(0, 0, 0, 1), pad_edge=False, expand=False)
    table.add_column("labels", width=_LABEL_WIDTH, overflow="fold")
    for c in columns:
        table.add_column(c, justify="right", width=_VALUE_WIDTH, no_wrap=True)
    return table


def _cell(unit: Unit, cells: dict[str, float], column: str) -> str:
    return format_value(unit, cells[column], compact=True) if column in cells else ""


def kpi_tsv(snap: Snapshot) -> Iterator[str]:
    """Tab-separated lines: metric, labels (k=v,…), window ('-' if none), raw value; header first."""
    yield "metric\tlabels\twindow\tvalue"
    for item in kpi_rows(snap):
        labels = dict(item["labels"])
        window = labels.pop("window", "-")
        text = ",".join(f"{k}={v}" for k, v in labels.items()) or "-"
        yield f"{item['metric']}\t{text}\t{window}\t{item['value']!r}"


def _reasons(row: dict[str, Any]) -> str:
    return ", ".join(f"{r['reason']} x{r['count']} ({r['points']})" for r in row["reasons"])


def at_risk_table(rows: Sequence[dict[str, Any]]) -> Table:
    """Customer ids whole (never cut, so two ids never look alike), reasons wrapped; fits 80 columns."""
    table = Table(
        title=f"Customers at churn risk ({len(rows)})", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    table.add_column(
        "customer", style="cyan", no_wrap=True, min_width=max((len(r["customer_id"]) for r in rows), default=8)
    )
    table.add_column("points", justify="right", no_wrap=True)
    table.add_column("reasons (count, points)", overflow="fold", ratio=1)
    table.add_column("at risk until", no_wrap=True)
    for row in rows:
        until = str(row["at_risk_until"])[:16].replace("T", " ")
        table.add_row(row["customer_id"], str(row["points"]), _reasons(row), until)
    return table


def at_risk_tsv(rows: Sequence[dict[str, Any]]) -> Iterator[str]:
    """Tab-separated lines: customer_id, points, at_risk_until, reasons (reason:count:points;…); header first."""
    yield "customer_id\tpoints\tat_risk_until\treasons"
    for row in rows:
        reasons = ";".join(f"{r['reason']}:{r['count']}:{r['points']}" for r in row["reasons"])
        yield f"{row['customer_id']}\t{row['points']}\t{row['at_risk_until']}\t{reasons}"


def _when(timestamp_ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def dead_letter_table(letters: Sequence[Any], topic: str) -> Table:
    """Dead letters for people: time (UTC), reason, source topic:partition@offset, detail wrapped; fits 80 columns."""
    table = Table(title=f"{topic} ({len(letters)})", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("dead-lettered (UTC)", no_wrap=True)
    table.add_column("reason", no_wrap=True, style="yellow")
    table.add_column("source", overflow="fold")
    table.add_column("detail", overflow="fold", ratio=1)
    for d in letters:
        source = f"{d.source_topic}:{d.source_partition}@{d.source_offset}"
        table.add_row(_when(d.timestamp_ms), d.reason, source, d.detail)
    return table


def dead_letter_tsv(letters: Sequence[Any]) -> Iterator[str]:
    """Tab-separated lines: time (UTC, ISO), reason, source topic, partition, offset, detail; header first."""
    yield "time\treason\tsource_topic\tsource_partition\tsource_offset\tdetail"
    for d in letters:
        detail = d.detail.replace("\t", " ").replace("\n", " ")
        when = _when(d.timestamp_ms).replace(" ", "T") + "Z"
        yield f"{when}\t{d.reason}\t{d.source_topic}\t{d.source_partition}\t{d.source_offset}\t{detail}"
