"""The user docs (README.md, docs/*.md): generated tables fresh, links alive, contract complete.

The project's contract lives in these pages, so they must name every event type,
dead-letter reason, metric, command and setting the code has, and must not point
outside the repository.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from schemas import EVENT_TYPES, TOPIC_FAMILY
from schemas.export import topic_of
from stream.cli.commands import cli
from stream.devtools.reference_tables import GENERATED, render_readme
from stream.events.decode import REASONS
from stream.kpis import METRICS
from stream.settings import Settings
from tests.support.harness import ROOT

DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _text(path: Path) -> str:
    return path.read_text()


def _prose(path: Path) -> str:
    """The page without its fenced code blocks."""
    return _FENCE.sub("", _text(path))


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_sections_are_present_and_fresh(name: str) -> None:
    text = _text(ROOT / name)
    for marker in GENERATED[name]:
        assert f"<!-- {marker}:start -->" in text and f"<!-- {marker}:end -->" in text, f"{name}: {marker}"
    assert render_readme(text) == text, "run: python -m stream.devtools.reference_tables"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page: Path) -> None:
    for target in _LINK.findall(_prose(page)):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        assert dest.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert dest.suffix == ".md", f"{page.name}: anchor into a non-Markdown file: {target}"
            assert anchor in _anchors(dest), f"{page.name}: {dest.name} has no heading #{anchor}"


def test_no_file_refers_to_a_contract_outside_the_repository() -> None:
    """Users have this repository only: no file may cite a document outside it."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    marks = ("\N{SECTION SIGN}", "SPEC" + " ", "../" + "shared", "shared/" + "SPEC", "shared/" + "DESIGN")
    offenders = []
    for name in tracked.splitlines():
        path = ROOT / name
        if path.suffix in {".json", ".jar", ".png"} or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{name}: {mark!r}" for mark in marks if mark in text]
    assert not offenders, offenders


def test_events_page_covers_every_type_reason_and_header() -> None:
    text = _text(ROOT / "docs" / "events.md")
    for kind in EVENT_TYPES:
        assert f"`{kind}`" in text, kind
    for reason in REASONS:
        assert f"`{reason}`" in text, reason
    for header in ("reason", "detail", "source_topic", "source_partition", "source_offset"):
        assert f"| `{header}` |" in text, header


def test_readme_names_each_type_topic_and_schema_in_one_row() -> None:
    rows = {line.split("|")[1].strip(" `"): line for line in _text(ROOT / "README.md").splitlines()
            if line.startswith("| `") and ".json" in line}  # fmt: skip
    assert set(rows) == set(EVENT_TYPES)
    for kind, row in rows.items():
        assert f"`{topic_of(kind)}`" in row and f"(schemas/json/{kind}.json)" in row, row


def test_committed_schemas_name_their_topic() -> None:
    for kind in EVENT_TYPES:
        schema = json.loads((ROOT / "schemas" / "json" / f"{kind}.json").read_text())
        topic = f"crm.{TOPIC_FAMILY[kind]}"
        assert (schema["x-topic"], schema["x-topic-family"], schema["x-event-type"]) == (
            topic,
            TOPIC_FAMILY[kind],
            kind,
        )
        assert topic in schema["title"] and topic in schema["description"]


def _operational_metric_names() -> set[str]:
    import redis

    from stream.exporter import KpiCollector
    from stream.kafka.lag_exporter import LagCollector
    from stream.settings import load_settings
    from stream.worker.metrics import WorkerMetrics

    worker = WorkerMetrics()
    worker.watch_lag(dict)
    names = {f.name + ("_total" if f.type == "counter" else "") for f in worker.registry.collect()}
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    kpi = {m.name for m in METRICS}
    names |= {
        f.name + ("_total" if f.type == "counter" else "") for f in KpiCollector(unreachable, load_settings()).collect()
    } - kpi
    lag = LagCollector(load_settings(kafka_bootstrap_servers="127.0.0.1:1"), timeout_s=1)
    names |= {f.name for f in lag.collect()}
    return names


def test_kpi_page_covers_every_metric() -> None:
    text = _text(ROOT / "docs" / "kpi-definitions.md")
    ops = _operational_metric_names()
    assert "crm_kafka_consumer_lag" in ops and "crm_exporter_redis_up" in ops
    for name in [m.name for m in METRICS] + sorted(ops):
        assert f"`{name}`" in text, name


def _commands() -> dict[str, list[str]]:
    """{'crm-kpi topics create': ['--partitions'], …} for every command of the CLI."""
    import click

    out: dict[str, list[str]] = {}

    def walk(group: click.Group, path: str) -> None:
        for name, command in group.commands.items():
            full = f"{path} {name}"
            if isinstance(command, click.Group):
                walk(command, full)
            else:
                opts = [o for p in command.params if isinstance(p, click.Option) for o in p.opts if o.startswith("--")]
                out[full] = opts

    walk(cli, "crm-kpi")
    return out


def test_configuration_page_covers_every_command_option_and_setting() -> None:
    text = _text(ROOT / "docs" / "configuration.md")
    commands = _commands()
    assert len(commands) == 14
    for command, options in commands.items():
        assert f"### `{command}`" in text, command
        section = text.split(f"### `{command}`", 1)[1].split("\n#", 1)[0]
        for option in options:
            assert f"`{option}" in section, f"{command} {option}"
    for name in Settings.model_fields:
        assert f"`CRM_KPI_{name.upper()}`" in text, name


def test_schemas_export_names_the_configured_prefix(tmp_path: Path) -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["schemas", "export", str(tmp_path)], env={"CRM_KPI_TOPIC_PREFIX": "acme."})
    assert result.exit_code == 0, result.output
    schema = json.loads((tmp_path / "ticket.opened.json").read_text())
    assert schema["x-topic"] == "acme.tickets" and "acme.tickets" in schema["title"]
    refused = CliRunner().invoke(cli, ["schemas", "export", str(tmp_path), "--topic-prefix", "a b"])
    assert refused.exit_code == 2 and "--topic-prefix" in refused.output
