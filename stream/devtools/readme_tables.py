"""The README's metrics and settings reference, generated from the code.

`python -m stream.devtools.readme_tables` rewrites the marked sections of README.md;
a test fails when they drift.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from stream.kpis import METRICS
from stream.settings import Settings

__all__ = ["metrics_table", "render_readme", "settings_table"]


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


def _keep_markers(body: str) -> Callable[[re.Match[str]], str]:
    return lambda m: f"{m.group(1)}{body}{m.group(2)}"


def render_readme(text: str) -> str:
    """README text with its generated sections replaced by fresh ones."""
    for marker, body in (("metrics", metrics_table()), ("settings", settings_table())):
        pattern = re.compile(rf"(<!-- {marker}:start -->\n).*?(\n<!-- {marker}:end -->)", re.S)
        text = pattern.sub(_keep_markers(body), text)
    return text


if __name__ == "__main__":
    readme = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    readme.write_text(render_readme(readme.read_text()))
