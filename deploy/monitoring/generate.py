"""Every generated file, and the command that writes or checks them."""

from __future__ import annotations

import argparse
from pathlib import Path

from .alerts import GROUPS
from .dashboards import DASHBOARDS
from .docs import alerts_md
from .grafana import dashboard_text
from .rules import rules_yaml

__all__ = ["ALERTS_DOC", "DASHBOARDS_DIR", "ROOT", "RULES_DIR", "generate", "main"]

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
DASHBOARDS_DIR = ROOT / "deploy" / "grafana" / "dashboards"
ALERTS_DOC = ROOT / "docs" / "alerts.md"


def generate() -> dict[Path, str]:
    """Every generated file: path -> content."""
    out: dict[Path, str] = {}
    for group in GROUPS:
        out[RULES_DIR / f"{group}.yml"] = rules_yaml(group)
    for board in DASHBOARDS:
        out[DASHBOARDS_DIR / f"{board.uid}.json"] = dashboard_text(board)
    out[ALERTS_DOC] = alerts_md()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.monitoring",
        description="Write the Prometheus alert rules, Grafana dashboards and docs/alerts.md.",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generate().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0
