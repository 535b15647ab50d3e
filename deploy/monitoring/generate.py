"""Every generated file, and the command that writes or checks them."""

from __future__ import annotations

import argparse
from pathlib import Path

from .alerts import GROUPS
from .dashboards import build_dashboards
from .deployment import DEFAULT_DEPLOYMENT, Deployment, option_name
from .docs import alerts_md
from .grafana import dashboard_text
from .rules import rules_yaml

__all__ = ["ALERTS_DOC", "DASHBOARDS_DIR", "ROOT", "RULES_DIR", "generate", "main"]

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
DASHBOARDS_DIR = ROOT / "deploy" / "grafana" / "dashboards"
ALERTS_DOC = ROOT / "docs" / "alerts.md"


def generate(deployment: Deployment = DEFAULT_DEPLOYMENT, root: Path = ROOT) -> dict[Path, str]:
    """Every generated file, path -> content; paths are those of this repository, moved below `root`."""
    out: dict[Path, str] = {}
    for group in GROUPS:
        out[RULES_DIR / f"{group}.yml"] = rules_yaml(group, deployment)
    for board in build_dashboards(deployment):
        out[DASHBOARDS_DIR / f"{board.uid}.json"] = dashboard_text(board)
    out[ALERTS_DOC] = alerts_md(deployment)
    return {root / path.relative_to(ROOT): text for path, text in out.items()}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.monitoring",
        description="Write the Prometheus alert rules, Grafana dashboards and docs/alerts.md."
        " The defaults match the compose stack (docker-compose.yml, deploy/prometheus/prometheus.yml);"
        " docs/alerts.md says how to generate for other scrape configs.",
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated file differs")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT,
        metavar="DIR",
        help="write the files below this directory, at their paths in the repository (default: the repository)",
    )
    for option in Deployment.option_fields():
        default = getattr(DEFAULT_DEPLOYMENT, option.name)
        parser.add_argument(
            option_name(option),
            default=default,
            metavar="URL" if option.name.endswith("url") else "MATCHERS",
            help=f"{option.metadata['help']} (default: {default!r})",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        deployment = Deployment(**{f.name: getattr(args, f.name) for f in Deployment.option_fields()})
    except ValueError as exc:
        parser.error(str(exc))
    root: Path = args.out.resolve()
    stale = []
    for path, text in generate(deployment, root).items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path.relative_to(root)}")
    return 1 if args.check and stale else 0
