"""The reference tables of README.md and docs/, generated from the code.

`python -m stream.devtools.reference_tables` rewrites the marked sections (`<!-- name:start -->`
… `<!-- name:end -->`) of README.md, docs/events.md and docs/kpi-definitions.md;
tests fail when they drift.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas import MODELS, TOPIC_FAMILY, type_of
from schemas.export import topic_of
from stream.kpis import METRICS, Metric
from stream.settings import Settings

__all__ = [
    "GENERATED",
    "event_fields_table",
    "kpi_metrics_table",
    "metrics_table",
    "render_readme",
    "settings_table",
    "topics_table",
    "unit_text",
]

GENERATED: dict[str, tuple[str, ...]] = {
    "README.md": ("topics", "metrics", "settings"),
    "docs/events.md": ("event-fields",),
    "docs/kpi-definitions.md": ("kpi-metrics",),
}
"""Which generated sections each document holds (paths relative to the repository root)."""

# Fields every event carries (docs/events.md, "Envelope"); the tables list the others.
_ENVELOPE = frozenset({"event_id", "type", "occurred_at", "schema_version", "source"})
_MODELS_BY_TYPE = {type_of(m): m for m in MODELS}


def metrics_table() -> str:
    """Markdown table of every KPI metric: domain, name, labels, unit, definition."""
    lines = ["| domain | metric | labels | unit | definition |", "|---|---|---|---|---|"]
    for m in METRICS:
        labels = ", ".join(f"`{label}`" for label in m.all_labels) or "—"
        lines.append(f"| {m.domain} | `{m.name}` | {labels} | {m.unit} | {m.help} |")
    return "\n".join(lines)


def settings_table() -> str:
    """Markdown table of every setting: environment variable, default."""
    lines = ["| variable | default |", "|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        shown = "—" if default is None else f"`{default}`"
        lines.append(f"| `CRM_KPI_{name.upper()}` | {shown} |")
    return "\n".join(lines)


def topics_table() -> str:
    """Markdown table of every event type: its topic (default prefix), JSON Schema and docs."""
    lines = ["| event type | topic | JSON Schema | required fields beyond the envelope |", "|---|---|---|---|"]
    for kind in TOPIC_FAMILY:
        schema = _MODELS_BY_TYPE[kind].model_json_schema(mode="validation")
        required = ", ".join(f"`{f}`" for f in schema["required"] if f not in _ENVELOPE) or "—"
        lines.append(
            f"| `{kind}` | `{topic_of(kind)}` | [`schemas/json/{kind}.json`](schemas/json/{kind}.json) | {required} |"
        )
    return "\n".join(lines)


def _field_type(prop: dict[str, Any]) -> str:
    """Short description of one JSON Schema property (nullable variants read as their type)."""
    options = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
    p = options[0]
    if p.get("description") == "ISO 4217 currency code":
        return "currency"
    if "enum" in p:
        return " \\| ".join(f"`{v}`" for v in p["enum"])
    if p.get("format") == "date-time":
        return "timestamp"
    if p.get("type") == "number":
        return "amount ≥ 0"
    if p.get("type") == "string":
        low, high = p.get("minLength", 0), p["maxLength"]
        if (low, high) == (1, 128):
            return "id"
        return f"text {low}–{high}" if low else f"text ≤ {high}"
    if p.get("type") == "integer":
        return f"integer {p['minimum']}–{p['maximum']}"
    if p.get("type") == "boolean":
        return "boolean"
    raise ValueError(f"no short name for {prop}")


def _per_kind_ranges(schema: dict[str, Any]) -> dict[str, str]:
    """{field: 'range per `kind`: …'} from the schema's if/then rules (survey scores)."""
    out: dict[str, list[str]] = {}
    for rule in schema.get("allOf", []):
        ((when, cond),) = rule["if"]["properties"].items()
        for field, bounds in rule["then"]["properties"].items():
            out.setdefault(field, []).append(f"{cond['const']} {bounds['minimum']}–{bounds['maximum']}")
    return {field: f"range by `{when}`: " + ", ".join(parts) for field, parts in out.items()}


def event_fields_table() -> str:
    """Markdown table of every event type: topic, required and optional fields beyond the envelope."""
    lines = [
        "| event type | topic | required fields | optional fields (default) | what it says |",
        "|---|---|---|---|---|",
    ]
    for kind in TOPIC_FAMILY:
        model = _MODELS_BY_TYPE[kind]
        schema = model.model_json_schema(mode="validation")
        per_kind = _per_kind_ranges(schema)
        required, optional = [], []
        for name, prop in schema["properties"].items():
            if name in _ENVELOPE:
                continue
            shown = f"`{name}` ({_field_type(prop)}"
            if name in per_kind:
                shown += f"; {per_kind[name]}"
            if name in schema["required"]:
                required.append(shown + ")")
            else:
                default = prop.get("default")
                optional.append(shown + (")" if default is None else f", default `{_json(default)}`)"))
        what = (model.__doc__ or "").strip().splitlines()[0]
        lines.append(
            f"| `{kind}` | `{topic_of(kind)}` | {', '.join(required) or '—'} | {', '.join(optional) or '—'} | {what} |"
        )
    return "\n".join(lines)


def _json(value: object) -> str:
    return {True: "true", False: "false"}.get(value, str(value)) if isinstance(value, bool) else str(value)


_UNIT_TEXT = {
    "count": "count",
    "ratio": "ratio",
    "seconds": "seconds",
    "amount": "amount in `currency`",
    "score": "score (see definition)",
}


def unit_text(metric: Metric) -> str:
    """The unit of a KPI metric's values, as the docs spell it."""
    return _UNIT_TEXT[metric.unit]


def kpi_metrics_table() -> str:
    """Markdown table of every KPI metric: name, unit, labels, window or now, definition."""
    lines = ["| metric | unit | labels | over | definition |", "|---|---|---|---|---|"]
    for m in METRICS:
        labels = ", ".join(f"`{label}`" for label in m.all_labels) or "—"
        over = "each window" if m.windowed else "now"
        lines.append(f"| `{m.name}` | {unit_text(m)} | {labels} | {over} | {m.help} |")
    return "\n".join(lines)


_TABLES: dict[str, Callable[[], str]] = {
    "topics": topics_table,
    "metrics": metrics_table,
    "settings": settings_table,
    "event-fields": event_fields_table,
    "kpi-metrics": kpi_metrics_table,
}


def _keep_markers(body: str) -> Callable[[re.Match[str]], str]:
    return lambda m: f"{m.group(1)}{body}\n{m.group(2)}"


def render_readme(text: str) -> str:
    """A document's text with every generated section it holds replaced by a fresh one.

    Works on any of the documents in GENERATED (the name is historical).
    """
    for marker, table in _TABLES.items():
        pattern = re.compile(rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)", re.S)
        if pattern.search(text):
            text = pattern.sub(_keep_markers(table()), text)
    return text


if __name__ == "__main__":
    for name in sys.argv[1:] or list(GENERATED):
        path = Path(name)
        path.write_text(render_readme(path.read_text()))
