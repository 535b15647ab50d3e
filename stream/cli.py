"""The `crm-kpi` command line (SPEC §7)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from stream.config import Settings, SettingsError, load_settings

__all__ = ["main"]


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        click.echo(f"crm-kpi: {exc}", err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Streaming CRM KPIs: Kafka events in, Redis windows, Prometheus gauges out."""


@cli.command()
def worker() -> None:
    """Run a worker: consume the topics, update Redis, serve /metrics on CRM_KPI_WORKER_PORT."""
    from stream.worker import run_worker

    run_worker(_settings())


@cli.command()
@click.option("--port", type=int, default=None, help="Overrides CRM_KPI_EXPORTER_PORT.")
def exporter(port: int | None) -> None:
    """Serve the KPI gauges on /metrics (CRM_KPI_EXPORTER_PORT, default 9464)."""
    import logging

    from stream.exporter import run_exporter

    settings = _settings(exporter_port=port)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_exporter(settings)


@cli.group()
def topics() -> None:
    """Manage the Kafka topics."""


@topics.command("create")
@click.option("--partitions", type=int, default=None, help="Overrides CRM_KPI_TOPIC_PARTITIONS.")
def topics_create(partitions: int | None) -> None:
    """Create the event topics and the dead-letter topic (existing ones are left alone)."""
    from stream.topics import create_topics

    settings = _settings(topic_partitions=partitions)
    created = asyncio.run(create_topics(settings))
    click.echo(f"created {len(created)} topic(s){': ' + ', '.join(created) if created else ''}")


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--skip-invalid", is_flag=True, help="Publish the valid lines even if some are bad.")
@click.option("--rate", type=float, default=None, help="Events per second (default: as fast as possible).")
def publish(file: Path, skip_invalid: bool, rate: float | None) -> None:
    """Validate every line of a JSON Lines FILE, then publish the events to their topics."""
    from rich.console import Console
    from rich.progress import Progress

    from stream.publish import publish_payloads, read_jsonl

    settings = _settings()
    console = Console(stderr=True)
    good, bad = read_jsonl(file)
    for line in bad[:50]:
        console.print(f"[red]line {line.number}[/red]: {line.error}")
    if len(bad) > 50:
        console.print(f"... and {len(bad) - 50} more bad lines")
    if bad and not skip_invalid:
        console.print(f"{len(bad)} invalid line(s); nothing published (use --skip-invalid to publish the rest)")
        sys.exit(1)
    import time

    started = time.monotonic()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("publishing", total=len(good))
        sent = asyncio.run(publish_payloads(settings, good, lambda n: progress.advance(task, n), rate))
    elapsed = time.monotonic() - started
    console.print(f"published {sent}, skipped {len(bad)} invalid, {sent / elapsed if elapsed else 0:,.0f} events/s")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def kpis(as_json: bool) -> None:
    """Print the current KPIs (every window) as a table."""
    from rich.console import Console

    from stream.exporter import snapshot, sync_redis
    from stream.report import kpi_rows, kpi_table

    settings = _settings()
    snap = snapshot(sync_redis(settings), settings)
    if as_json:
        click.echo(json.dumps(kpi_rows(snap), indent=2))
    else:
        Console().print(kpi_table(snap))


@cli.group()
def schemas() -> None:
    """Event JSON Schemas."""


@schemas.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def schemas_export(directory: Path) -> None:
    """Write the JSON Schema of every event type into DIRECTORY."""
    from schemas import export_json_schemas

    written = export_json_schemas(directory)
    click.echo(f"wrote {len(written)} schemas to {directory}")


def main() -> None:
    """Console-script entry point."""
    cli()
