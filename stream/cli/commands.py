"""The `crm-kpi` command line (docs/configuration.md)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from stream.events.decode import REASONS as REASON_CHOICES
from stream.security.redact import install_redaction, mask_url
from stream.settings import Settings, SettingsError, load_settings

__all__ = ["main"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _settings(**overrides: Any) -> Settings:
    """The settings (exit 2 with one line if one is bad); from here on no secret reaches any output."""
    install_redaction()
    try:
        settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        click.echo(f"crm-kpi: {exc}", err=True)
        sys.exit(2)
    install_redaction(settings.secret_values())
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    if settings.log_level != "debug":
        # The Kafka client logs each failed connection attempt; the command says it once.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return settings


def _one_line_failures(command: _F) -> _F:
    """Connection and access failures end the command with one line on stderr and exit status 1.

    With CRM_KPI_LOG_LEVEL=debug the traceback is logged too (redacted).
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from redis.exceptions import RedisClusterException, RedisError

        from stream.kafka.clients import KafkaAccessError

        try:
            return command(*args, **kwargs)
        except (TimeoutError, KafkaAccessError, RedisError, RedisClusterException, OSError) as exc:
            logging.getLogger("stream.cli").debug("%s failed", command.__name__, exc_info=True)
            click.echo(f"crm-kpi: {mask_url(_describe(exc))}", err=True)
            sys.exit(1)
        except Exception as exc:
            from aiokafka.errors import KafkaError

            if not isinstance(exc, KafkaError):
                raise
            logging.getLogger("stream.cli").debug("%s failed", command.__name__, exc_info=True)
            click.echo(f"crm-kpi: Kafka: {mask_url(str(exc) or type(exc).__name__)}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _describe(exc: BaseException) -> str:
    from redis.exceptions import RedisClusterException, RedisError

    from stream.kafka.clients import KafkaAccessError

    if isinstance(exc, KafkaAccessError):
        return str(exc)
    settings = load_settings()
    if isinstance(exc, RedisError | RedisClusterException):
        from stream.store.connection import describe_redis_error

        return str(describe_redis_error(exc, settings))
    from stream.kafka.clients import describe_kafka_error

    return str(describe_kafka_error(exc, settings, settings.kafka_bootstrap_servers))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="crm-kpi-stream", prog_name="crm-kpi", message="%(prog)s %(version)s")
def cli() -> None:
    """Streaming CRM KPIs: Kafka events in, Redis windows, Prometheus gauges out."""


@cli.command()
def worker() -> None:
    """Run a worker: consume the topics, update Redis, serve /metrics on CRM_KPI_WORKER_PORT."""
    from stream.worker.app import run_worker

    run_worker(_settings())


@cli.command()
@click.option("--port", type=int, default=None, help="Overrides CRM_KPI_EXPORTER_PORT.")
def exporter(port: int | None) -> None:
    """Serve the KPI gauges on /metrics (CRM_KPI_EXPORTER_HOST:CRM_KPI_EXPORTER_PORT, default port 9464)."""
    from stream.exporter.collector import run_exporter

    settings = _settings(exporter_port=port)
    try:
        run_exporter(settings)
    except OSError as exc:
        _cannot_listen("CRM_KPI_EXPORTER_PORT", settings.exporter_host, settings.exporter_port, exc)


@cli.command("lag-exporter")
@click.option("--port", type=int, default=None, help="Overrides CRM_KPI_LAG_EXPORTER_PORT.")
def lag_exporter(port: int | None) -> None:
    """Serve the workers' consumer-group lag read from the broker on /metrics (CRM_KPI_LAG_EXPORTER_PORT, 9308)."""
    import logging

    from stream.kafka.lag_exporter import run_lag_exporter

    settings = _settings(lag_exporter_port=port)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # one warning line per failed scrape is ours
    try:
        run_lag_exporter(settings)
    except OSError as exc:
        _cannot_listen("CRM_KPI_LAG_EXPORTER_PORT", settings.exporter_host, settings.lag_exporter_port, exc)


def _cannot_listen(port_setting: str, host: str, port: int, exc: OSError) -> NoReturn:
    click.echo(
        f"crm-kpi: cannot listen on CRM_KPI_EXPORTER_HOST:{port_setting}={host}:{port}: {exc.strerror or exc}",
        err=True,
    )
    sys.exit(1)


@cli.group()
def topics() -> None:
    """Manage the Kafka topics."""


@topics.command("create")
@click.option("--partitions", type=int, default=None, help="Overrides CRM_KPI_TOPIC_PARTITIONS.")
@_one_line_failures
def topics_create(partitions: int | None) -> None:
    """Create the event topics, the dead-letter topic and the repartition topic (existing ones are left alone).

    Exits 1 when an existing topic has another partition count than the setting.
    """
    from stream.kafka.topics import ensure_topics

    settings = _settings(topic_partitions=partitions)
    report = asyncio.run(ensure_topics(settings))
    created = report.created
    click.echo(f"created {len(created)} topic(s){': ' + ', '.join(created) if created else ''}")
    for name, count in sorted(report.mismatched.items()):
        click.echo(
            f"crm-kpi: topic {name} has {count} partition(s), CRM_KPI_TOPIC_PARTITIONS is "
            f"{settings.topic_partitions} (see docs/runbooks.md#topic-partition-count-differs)",
            err=True,
        )
    if report.mismatched:
        sys.exit(1)


@cli.group()
def offsets() -> None:
    """Redis's applied offsets against the Kafka logs (a recreated or truncated topic)."""


def _offsets_failed(exc: Exception) -> None:
    click.echo(f"crm-kpi: could not read the offsets: {type(exc).__name__}: {exc}", err=True)
    sys.exit(2)


@offsets.command("show")
@click.option("--topic", "topics", multiple=True, help="Only this topic (repeatable); default: every event topic.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def offsets_show(topics: tuple[str, ...], as_json: bool) -> None:
    """Per partition: Redis's next offset, the log's start and end, lag, gaps, and whether the log matches.

    Exits 1 when a partition's log is not the one Redis's offsets count (see `offsets reset`).
    """
    from rich.console import Console

    from stream.cli.offsets import PartitionState, as_json_rows, offsets_table, read_offsets, store_for

    settings = _settings()
    _check_topics(settings, topics)

    async def main() -> list[PartitionState]:
        client, store = store_for(settings)
        try:
            return await read_offsets(settings, store, list(topics) or None)
        finally:
            await client.aclose()

    try:
        states = asyncio.run(main())
    except Exception as exc:  # one line, whatever failed (Kafka, Redis, network)
        _offsets_failed(exc)
    if as_json:
        click.echo(json.dumps(as_json_rows(states), indent=2))
    else:
        Console().print(offsets_table(states))
    if any(s.lag is None for s in states):
        sys.exit(1)


@offsets.command("reset")
@click.option("--topic", "topics", multiple=True, required=True, help="Topic to re-anchor (repeatable).")
@click.option("--partition", "partitions", type=int, multiple=True, help="Only this partition (repeatable).")
@click.option("--to-log-start", "to", flag_value="log-start", help="Apply every record the log holds now.")
@click.option("--to-log-end", "to", flag_value="log-end", help="Skip every record the log holds now.")
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
def offsets_reset(topics: tuple[str, ...], partitions: tuple[int, ...], to: str | None, dry_run: bool) -> None:
    """Re-anchor Redis's applied offsets of a topic at its log start or end (docs/runbooks.md).

    For a topic that was recreated or truncated: the workers pause its partitions and
    resume by themselves within seconds of the reset. Exits 1 if a partition changed
    while the command ran (run it again).
    """
    from stream.cli.offsets import ResetResult, reset_offsets, store_for

    if to is None:
        raise click.UsageError("give --to-log-start or --to-log-end")
    settings = _settings()
    _check_topics(settings, topics)

    async def main() -> list[ResetResult]:
        client, store = store_for(settings)
        try:
            return await reset_offsets(
                settings, store, topics, partitions or None, "log-start" if to == "log-start" else "log-end", dry_run
            )
        finally:
            await client.aclose()

    try:
        results = asyncio.run(main())
    except Exception as exc:  # one line, whatever failed (Kafka, Redis, network)
        _offsets_failed(exc)
    verb = "would set" if dry_run else "set"
    for r in results:
        before = "none" if r.before is None else str(r.before)
        skipped = f"; {r.skipped} record(s) of the log will not be applied" if r.skipped else ""
        changed = "" if dry_run or r.done else " FAILED: the offset changed meanwhile, run the command again"
        click.echo(f"{r.field}: {verb} the applied offset {before} -> {r.after}{skipped}{changed}")
    if not dry_run and not all(r.done for r in results):
        sys.exit(1)


def _check_topics(settings: Settings, topics: tuple[str, ...]) -> None:
    consumed = settings.consumed_topics()
    unknown = sorted(set(topics) - set(consumed))
    if unknown:
        raise click.BadParameter(
            f"{', '.join(unknown)} is not a topic the worker consumes ({', '.join(consumed)})", param_hint="--topic"
        )


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--skip-invalid", is_flag=True, help="Publish the valid lines even if some are bad.")
@click.option("--rate", type=float, default=None, help="Events per second (default: as fast as possible).")
@_one_line_failures
def publish(file: Path, skip_invalid: bool, rate: float | None) -> None:
    """Validate every line of a JSON Lines FILE as the worker will, then publish the events to their topics."""
    from rich.console import Console
    from rich.progress import Progress

    from stream.kafka.publisher import publish_payloads, read_jsonl
    from stream.kafka.topics import MissingTopicsError

    settings = _settings()
    console = Console(stderr=True)
    good, bad = read_jsonl(file, settings)
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
        try:
            sent = asyncio.run(publish_payloads(settings, good, lambda n: progress.advance(task, n), rate))
        except MissingTopicsError as exc:
            console.print(f"crm-kpi: {exc}", markup=False)
            sys.exit(1)
    elapsed = time.monotonic() - started
    console.print(f"published {sent}, skipped {len(bad)} invalid, {sent / elapsed if elapsed else 0:,.0f} events/s")


def _plain_output() -> bool:
    """True when stdout is not a terminal: the read commands print tab-separated lines."""
    return not sys.stdout.isatty()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_one_line_failures
def kpis(as_json: bool) -> None:
    """Print the current KPIs (every window) as a table; tab-separated lines when piped."""
    from rich.console import Console

    from stream.exporter.collector import snapshot, sync_redis
    from stream.exporter.tables import kpi_rows, kpi_table, kpi_tsv

    settings = _settings()
    snap = snapshot(sync_redis(settings), settings)
    if as_json:
        click.echo(json.dumps(kpi_rows(snap), indent=2))
    elif _plain_output():
        click.echo("\n".join(kpi_tsv(snap)))
    else:
        Console().print(kpi_table(snap))


@cli.command("at-risk")
@click.option("--top", type=int, default=None, help="Only the N customers with the most points.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_one_line_failures
def at_risk(top: int | None, as_json: bool) -> None:
    """List the customers at churn risk with their points and reasons; tab-separated lines when piped."""
    import time
    from datetime import UTC, datetime

    from rich.console import Console

    from stream.exporter.collector import sync_redis
    from stream.exporter.tables import at_risk_table, at_risk_tsv
    from stream.store import Keys, read_at_risk

    settings = _settings()
    rows = read_at_risk(sync_redis(settings), Keys(settings.redis_key_prefix), time.time(), top)
    for row in rows:
        row["at_risk_until"] = datetime.fromtimestamp(row["at_risk_until"], UTC).isoformat().replace("+00:00", "Z")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif _plain_output():
        click.echo("\n".join(at_risk_tsv(rows)))
    else:
        Console().print(at_risk_table(rows))


# --- dead letters ---------------------------------------------------------------


def _dead_letter_filters(f: Any) -> Any:
    f = click.option("--limit", type=int, default=None, help="Only the latest N matching records.")(f)
    f = click.option(
        "--since", default=None, help="Only records dead-lettered since: a duration ago (2h, 7d) or RFC 3339."
    )(f)
    f = click.option("--topic", "topics", multiple=True, help="Only records from this source topic (repeatable).")(f)
    f = click.option("--reason", "reasons", multiple=True, type=click.Choice(REASON_CHOICES),
                     help="Only records dead-lettered for this reason (repeatable).")(f)
    return f


def _since_ms(since: str | None) -> int | None:
    import time

    from stream.devtools.simulate import parse_start
    from stream.settings import parse_duration

    if since is None:
        return None
    try:
        return int((time.time() - parse_duration(since)) * 1000)
    except ValueError:
        pass
    try:
        return int(parse_start(since).timestamp() * 1000)
    except ValueError:
        hint = f"{since!r}: use a duration (2h, 7d) or an RFC 3339 time"
        raise click.BadParameter(hint, param_hint="--since") from None


@cli.group("dead-letter")
def dead_letter() -> None:
    """Inspect the dead-letter topic and send records back to their source topic."""


@dead_letter.command("list")
@_dead_letter_filters
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one object per record).")
@_one_line_failures
def dead_letter_list(
    reasons: tuple[str, ...], topics: tuple[str, ...], since: str | None, limit: int | None, as_json: bool
) -> None:
    """List dead letters: time, reason, source topic/partition/offset, detail; tab-separated when piped."""
    from rich.console import Console

    from stream.exporter.tables import dead_letter_table, dead_letter_tsv
    from stream.kafka.dead_letter_topic import read_dead_letters

    settings = _settings()
    letters = asyncio.run(
        read_dead_letters(settings, since_ms=_since_ms(since), reasons=reasons, source_topics=topics, limit=limit)
    )
    if as_json:
        click.echo(json.dumps([d.as_json() for d in letters], indent=2))
    elif _plain_output():
        click.echo("\n".join(dead_letter_tsv(letters)))
    else:
        Console().print(dead_letter_table(letters, settings.dead_letter_topic))


@dead_letter.command("replay")
@_dead_letter_filters
@click.option("--all", "everything", is_flag=True,
              help="Send every matching record, also those the worker would still reject.")
@click.option("--dry-run", is_flag=True, help="Say what would be sent; send nothing.")
@_one_line_failures
def dead_letter_replay(
    reasons: tuple[str, ...], topics: tuple[str, ...], since: str | None, limit: int | None, everything: bool,
    dry_run: bool,
) -> None:
    """Re-publish dead letters to their source topic: by default those the worker would accept now (fixed).

    A record is fixed when the current settings and clock accept it: a relaxed limit, a
    future_timestamp whose time has come. Replays of the same event within the dedupe
    horizon are counted once.
    """
    from stream.kafka.dead_letter_topic import plan_replay, read_dead_letters, replay

    settings = _settings()
    letters = asyncio.run(
        read_dead_letters(settings, since_ms=_since_ms(since), reasons=reasons, source_topics=topics, limit=limit)
    )
    plan = plan_replay(settings, letters, everything)
    verb = "would send" if dry_run else "sending"
    for letter in plan.send:
        click.echo(f"{verb} {settings.dead_letter_topic}:{letter.partition}:{letter.offset} -> {letter.source_topic}"
                   f" ({letter.reason})")
    for letter, why in plan.keep:
        click.echo(f"keeping {settings.dead_letter_topic}:{letter.partition}:{letter.offset}: still {why.reason}"
                   f" ({why.detail})")
    sent = 0 if dry_run else asyncio.run(replay(settings, plan.send))
    summary = f"{len(plan.send)} to replay" if dry_run else f"replayed {sent}"
    click.echo(f"{summary}, kept {len(plan.keep)} of {len(letters)} dead letter(s)"
               + ("" if everything or not plan.keep else "; --all sends those too"), err=True)


@cli.group()
def schemas() -> None:
    """Event JSON Schemas."""


@schemas.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--topic-prefix", envvar="CRM_KPI_TOPIC_PREFIX", default="crm.", show_default=True,
              help="Topic prefix the schemas name (x-topic); defaults to CRM_KPI_TOPIC_PREFIX.")
def schemas_export(directory: Path, topic_prefix: str) -> None:
    """Write the JSON Schema of every event type, naming its topic, into DIRECTORY."""
    from schemas import export_json_schemas

    try:
        written = export_json_schemas(directory, topic_prefix)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--topic-prefix") from None
    click.echo(f"wrote {len(written)} schemas to {directory}")


# --- simulate -------------------------------------------------------------------


_INCIDENTS = ("churn-spike", "slow-responses")  # synthetic_crm.INCIDENTS (checked by a test)
_INCIDENT_HELP = (
    "Make alerts fire on purpose (repeatable), from 12 hours before the live edge: first answers 6x slower,"
    " or churn 10x and NPS down."
)
_RATE_HELP = (
    "Mean events per second of event time, reached by making every customer busier (load tests);"
    " default: the realistic rate of --customers."
)


@cli.command()
@click.option("--rate", type=float, default=None, help=_RATE_HELP)
@click.option("--customers", type=int, default=20_000, show_default=True, help="Customers at the start.")
@click.option("--duration", default=None, help="Stop after this much event time (90s, 15m, 2h, 7d).")
@click.option("--events", type=int, default=None, help="Stop after this many events.")
@click.option("--seed", type=int, default=None,
              help="Random seed (same seed and --start: same events); random if not given.")
@click.option("--start", default=None, help="RFC 3339 event time of the first event (past: backfill). Default: now.")
@click.option("--incident", "incidents", multiple=True, type=click.Choice(_INCIDENTS), help=_INCIDENT_HELP)
@click.option("--incident-start", default=None,
              help="RFC 3339 event time the incidents begin. Default: 12 hours before now, or --start if later.")
@click.option("--core-only", is_flag=True, help="Only the core event types (leads, deals, tickets, surveys).")
@_one_line_failures
def simulate(
    rate: float | None, customers: int, duration: str | None, events: int | None, seed: int | None,
    start: str | None, incidents: tuple[str, ...], incident_start: str | None, core_only: bool,
) -> None:
    """Publish a realistic synthetic CRM event stream (until --duration/--events, or Ctrl-C).

    Each event is published as soon as possible but never before its event time:
    history (--start in the past) goes out at full speed, then the run continues live.
    """
    import random
    from datetime import UTC, datetime, timedelta

    from rich.console import Console

    from stream.devtools.simulate import parse_start, run_cli
    from stream.devtools.synthetic_crm import INCIDENT_LEAD_S, SimConfig, natural_rate
    from stream.kafka.topics import MissingTopicsError
    from stream.settings import parse_duration

    settings = _settings()
    try:
        duration_s = parse_duration(duration) if duration is not None else None
        now = datetime.now(UTC)
        first = parse_start(start) if start is not None else now
        config = SimConfig(
            seed=seed if seed is not None else random.SystemRandom().randrange(1_000_000),
            customers=customers, rate=rate, incidents=frozenset(incidents), catalog=not core_only,
            incident_start=(
                parse_start(incident_start) if incident_start else max(first, now - timedelta(seconds=INCIDENT_LEAD_S))
            ),
        )
        if events is not None and events < 0:
            raise ValueError("--events must be >= 0")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    console = Console(stderr=True, soft_wrap=True)
    mode = "backfill from" if first.timestamp() < datetime.now(UTC).timestamp() - 1 else "live from"
    console.print(
        f"simulate: seed {config.seed}, {customers:,} customers, "
        f"rate {rate if rate is not None else natural_rate(customers, not core_only):.3g}/s, {mode} "
        f"{first.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        + (f", incidents {', '.join(sorted(incidents))}" if incidents else "")
        + f" -> {settings.topic('*')} on {settings.kafka_bootstrap_servers}"
    )
    try:
        stats = run_cli(settings, config, first, events, duration_s, progress_bar=console.is_terminal)
    except MissingTopicsError as exc:
        console.print(f"crm-kpi: {exc}", markup=False)
        sys.exit(1)
    top = ", ".join(f"{t} {n:,}" for t, n in stats.by_type.most_common(5))
    console.print(
        f"published {stats.published:,} events ({stats.backfilled:,} backfilled) in {stats.seconds:,.1f}s, "
        f"{stats.rate:,.0f} events/s" + (f"; most: {top}" if top else "")
    )


# --- demo -----------------------------------------------------------------------


@cli.command()
@click.option("--duration", default=None, help="Stop after this long (90s, 5m); default: until Ctrl-C.")
@click.option("--customers", type=int, default=20_000, show_default=True, help="Simulator: customers at the start.")
@click.option("--rate", type=float, default=None, help=f"Simulator: {_RATE_HELP[0].lower()}{_RATE_HELP[1:]}")
@click.option("--seed", type=int, default=None, help="Simulator seed; random if not given.")
@click.option("--history", default="7d", show_default=True, help="Backfill this much simulated past first.")
@click.option("--incident", "incidents", multiple=True, type=click.Choice(_INCIDENTS), help=_INCIDENT_HELP)
@click.option("--worker-port", type=int, default=None, help="Worker /metrics port; free one if not given.")
@click.option("--exporter-port", type=int, default=None, help="Exporter /metrics port; free one if not given.")
@click.option("--refresh", type=float, default=1.5, show_default=True, help="Seconds between table refreshes.")
@click.option("--full", is_flag=True, help="Show every KPI series, not just the headline ones.")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="On exit, write pids, ports, URLs and KPI samples taken during the run to this file.")
def demo(
    duration: str | None, customers: int, rate: float | None, seed: int | None, history: str,
    incidents: tuple[str, ...], worker_port: int | None, exporter_port: int | None, refresh: float,
    full: bool, json_out: Path | None,
) -> None:
    """Everything on this machine: broker, Redis, worker, exporter, simulator and a live KPI table.

    Ctrl-C (or --duration) stops it all; nothing is left running.
    """
    from stream.devtools.demo import DemoOptions, run_demo
    from stream.settings import parse_duration

    try:
        opts = DemoOptions(
            rate=rate, customers=customers, seed=seed, incidents=frozenset(incidents),
            history_s=parse_duration(history), duration_s=parse_duration(duration) if duration else None,
            worker_port=worker_port, exporter_port=exporter_port, refresh_s=max(0.2, refresh),
            json_out=json_out, full_table=full,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    sys.exit(run_demo(opts))


def main() -> None:
    """Console-script entry point."""
    cli()
