"""`crm-kpi demo`: the embedded default (docs/configuration.md) in one command.

It starts, on 127.0.0.1 and free ports (unless given):

1. a Tansu broker and a Redis server (`stream.devtools.servers`), then creates the topics;
2. a worker and the exporter as child processes (`python -m stream worker|exporter`),
   configured through `CRM_KPI_*` variables pointing at those servers;
3. the simulator in-process (`stream.devtools.simulate`), starting `--history` ago: the
   past is backfilled at full speed, then events are published live, each when
   its event time comes;

then prints where to look and shows a live KPI table read from Redis every
`refresh` seconds (rich). Ctrl-C, SIGTERM, SIGHUP or `--duration` stop it: the
simulator flushes, the worker and the exporter get SIGTERM and are waited for
(SIGKILL after a grace period), then the servers are stopped the same way.

Every child starts with SIGINT blocked, so a Ctrl-C in the terminal (which
signals the whole foreground process group) reaches only the demo, and the
shutdown runs in order rather than as a race. The worker and the exporter also
get SIGTERM from the kernel if the demo itself dies (Linux `PR_SET_PDEATHSIG`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from stream.devtools.servers import EmbeddedServer, free_port, start_kafka, start_redis
from stream.devtools.simulate import SimulateStats, simulate
from stream.devtools.synthetic_crm import SimConfig
from stream.settings import Settings, SettingsError, load_settings
from stream.store import Snapshot

__all__ = ["DemoOptions", "headline_table", "run_demo"]

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_HELD = (signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class DemoOptions:
    """What `crm-kpi demo` runs."""

    rate: float = 20.0
    customers: int = 500
    seed: int | None = None
    incidents: frozenset[str] = frozenset()
    history_s: float = 2 * 3600.0
    duration_s: float | None = None
    worker_port: int | None = None
    exporter_port: int | None = None
    refresh_s: float = 1.5
    json_out: Path | None = None
    full_table: bool = False
    ready_timeout_s: float = 60.0


class DemoError(Exception):
    """The demo cannot go on (a child exited, a port is taken...)."""


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, grace: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class _State:
    servers: list[EmbeddedServer] = field(default_factory=list)
    children: list[_Child] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    stats: SimulateStats = field(default_factory=SimulateStats)
    reason: str = "duration"


@contextlib.contextmanager
def _spawning() -> Iterator[None]:
    """Start children with SIGINT blocked (a blocked mask survives fork and exec) and no stop signal lost.

    A SIGINT meanwhile stays pending and raises KeyboardInterrupt on the way out; a
    SIGTERM or SIGHUP is held until then too, so no child is left half-started.
    """
    held: list[int] = []
    old_handlers = {sig: signal.signal(sig, lambda signum, frame: held.append(signum)) for sig in _HELD}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    if held:
        raise KeyboardInterrupt


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _spawn(command: str, env: dict[str, str], workdir: Path) -> _Child:
    log = workdir / f"{command}.log"
    with open(log, "ab") as out, _spawning():
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream", command],
            env=env,
            cwd=workdir,  # Faust writes its data directory there
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    return _Child(command, proc, log)


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _wait_ready(state: _State, urls: dict[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting = dict(urls)
    while waiting:
        for child in state.children:
            if child.proc.poll() is not None:
                raise DemoError(f"{child.name} exited with code {child.proc.returncode}:\n{child.tail()}")
        for name, url in list(waiting.items()):
            if _http_ok(url):
                del waiting[name]
        if waiting and time.monotonic() > deadline:
            raise DemoError(f"not ready after {timeout:.0f}s: {', '.join(sorted(waiting))}")
        time.sleep(0.2)


# --- the live view ------------------------------------------------------------------

# (row title, metric, label values to match, how: "one" | "sum" over the other labels | "split" by them)
_HEADLINE: tuple[tuple[str, str, dict[str, str], str], ...] = (
    ("events", "crm_window_events", {}, "sum"),
    ("leads created", "crm_leads_created", {}, "sum"),
    ("lead conversion", "crm_lead_conversion_ratio", {}, "one"),
    ("deals won", "crm_deals_won", {}, "one"),
    ("deal win ratio", "crm_deal_win_ratio", {}, "one"),
    ("won amount", "crm_deal_won_amount", {}, "split"),
    ("sales cycle (mean)", "crm_sales_cycle_seconds_average", {}, "one"),
    ("first response p50", "crm_first_response_seconds", {"quantile": "0.5"}, "one"),
    ("first response p90", "crm_first_response_seconds", {"quantile": "0.9"}, "one"),
    ("first response SLA breach", "crm_first_response_sla_breach_ratio", {}, "split"),
    ("tickets awaiting answer", "crm_tickets_awaiting_response", {}, "sum"),
    ("  of which over SLA", "crm_tickets_awaiting_response_over_sla", {}, "sum"),
    ("NPS", "crm_nps_score", {}, "one"),
    ("CSAT", "crm_csat_ratio", {}, "one"),
    ("active customers", "crm_customers_active", {}, "one"),
    ("churn ratio", "crm_customer_churn_ratio", {}, "one"),
    ("customers at risk", "crm_customers_at_risk", {}, "one"),
    ("invoices overdue", "crm_invoices_overdue", {}, "one"),
)


def _fmt(metric: str, value: float) -> str:
    if metric.endswith("_ratio"):
        return f"{100 * value:.1f}%"
    if "_seconds" in metric:
        s = round(value)
        if s >= 86400:
            return f"{s / 86400:.1f}d"
        if s >= 3600:
            return f"{s // 3600}h{s % 3600 // 60:02d}m"
        return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.2f}" if abs(value) >= 100 else f"{value:.3g}"


def _series(snap: Snapshot) -> dict[str, list[tuple[dict[str, str], str, float]]]:
    from stream.exporter.tables import kpi_rows

    out: dict[str, list[tuple[dict[str, str], str, float]]] = defaultdict(list)
    for row in kpi_rows(snap):
        labels = dict(row["labels"])
        window = labels.pop("window", "now")
        out[row["metric"]].append((labels, window, float(row["value"])))
    return out


def headline_table(snap: Snapshot, title: str = "CRM KPIs (headline; crm-kpi kpis for all)") -> Table:
    """The demo's compact table: the headline KPIs, one column per window plus 'now'."""
    columns = [*snap.windows, "now"]
    table = Table(title=title, title_justify="left")
    table.add_column("KPI", style="cyan", no_wrap=True)
    for c in columns:
        table.add_column(c, justify="right")
    series = _series(snap)
    for name, metric, match, how in _HEADLINE:
        entries = [e for e in series.get(metric, []) if all(e[0].get(k) == v for k, v in match.items())]
        if not entries:
            continue
        rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for labels, window, value in entries:
            rest = ",".join(v for k, v in labels.items() if k not in match)
            rows[f"{name} {rest}" if how == "split" and rest else name][window] += value
        for row_name, cells in rows.items():
            table.add_row(row_name, *(_fmt(metric, cells[c]) if c in cells else "" for c in columns))
    return table


def _window_events(snap: Snapshot) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for _, window, value in _series(snap).get("crm_window_events", []):
        totals[window] += value
    return dict(totals)


def _status(state: _State, opts: DemoOptions, remaining: float | None) -> str:
    stats = state.stats
    when = "-" if stats.event_time is None else datetime.fromtimestamp(stats.event_time, UTC).strftime("%H:%M:%SZ")
    phase = "live" if stats.live else "backfilling history"
    text = f"simulator: {phase}, {stats.published:,} events published (event time {when}, rate {opts.rate:g}/s)"
    if opts.incidents:
        text += f", incidents: {', '.join(sorted(opts.incidents))}"
    return text + (f" · stops in {max(0.0, remaining):.0f}s" if remaining is not None else " · Ctrl-C to stop")


async def _live_view(settings: Settings, opts: DemoOptions, state: _State, console: Console) -> Snapshot | None:
    from rich.live import Live

    from stream.exporter.collector import snapshot, sync_redis
    from stream.exporter.tables import kpi_table

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def interrupted(sig: signal.Signals) -> None:
        state.reason = "interrupted" if sig == signal.SIGINT else f"signal {sig.name}"
        stop.set()

    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, interrupted, sig)
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(1_000_000)
    config = SimConfig(seed=seed, customers=opts.customers, rate=opts.rate, incidents=opts.incidents)
    start = datetime.now(UTC) - timedelta(seconds=opts.history_s)
    state.info["seed"] = seed
    state.stats = SimulateStats()
    sim = asyncio.create_task(simulate(settings, config, start, stop=stop, stats=state.stats))
    client = sync_redis(settings)
    began = time.monotonic()
    snap: Snapshot | None = None
    tty = console.is_terminal
    live = Live(console=console, auto_refresh=False, transient=False, vertical_overflow="crop") if tty else None
    try:
        with live if live is not None else contextlib.nullcontext():
            while True:
                remaining = None if opts.duration_s is None else opts.duration_s - (time.monotonic() - began)
                try:
                    snap = await asyncio.to_thread(snapshot, client, settings)
                except Exception as exc:  # Redis briefly busy: show the last figures
                    console.print(f"[yellow]reading Redis failed: {exc}[/yellow]")
                events = _window_events(snap) if snap is not None else {}
                state.samples.append(
                    {
                        "t": round(time.time(), 3),
                        "published": state.stats.published,
                        "live": state.stats.live,
                        "window_events": events,
                    }
                )
                status = _status(state, opts, remaining)
                if live is not None:
                    table = (kpi_table if opts.full_table else headline_table)(snap) if snap is not None else Text("")
                    live.update(Group(Text(state.info["banner"]), Text(status, style="bold"), table), refresh=True)
                else:
                    shown = ", ".join(f"{w}={int(v):,}" for w, v in events.items()) or "none yet"
                    console.print(f"{time.strftime('%H:%M:%S')} {status} · window events: {shown}")
                for child in state.children:
                    if child.proc.poll() is not None:
                        raise DemoError(f"{child.name} exited with code {child.proc.returncode}:\n{child.tail()}")
                if sim.done():
                    sim.result()  # raises what broke the simulator
                    raise DemoError("the simulator stopped unexpectedly")
                if remaining is not None and remaining <= 0:
                    break
                wait = opts.refresh_s if remaining is None else max(0.0, min(opts.refresh_s, remaining))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
                if stop.is_set():
                    break
    finally:
        stop.set()
        try:
            await asyncio.wait_for(sim, 15)
        except Exception as exc:
            console.print(f"[yellow]simulator: {exc!r}[/yellow]")
        client.close()
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    return snap


# --- the whole run ------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(opts: DemoOptions, console: Console | None = None) -> int:
    """Run the demo until `duration_s` or a stop signal; return the exit code."""
    if console is None:
        console = Console(soft_wrap=True)
        if not console.is_terminal:  # logs and pipes: wide enough for the final table
            console = Console(soft_wrap=True, width=160)
    state = _State()
    workdir = Path(tempfile.mkdtemp(prefix="crm-kpi-demo-"))
    handlers: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        handlers[sig] = signal.signal(sig, _raise_interrupt)
    code = 0
    snap: Snapshot | None = None
    try:
        with _spawning():
            state.servers.append(start_kafka())
        with _spawning():
            state.servers.append(start_redis())
        kafka, redis = state.servers
        worker_port = opts.worker_port or free_port()
        exporter_port = opts.exporter_port or free_port()
        try:
            settings = load_settings(
                kafka_bootstrap_servers=kafka.url,
                redis_url=redis.url,
                worker_port=worker_port,
                exporter_port=exporter_port,
                exporter_host="127.0.0.1",
            )
        except SettingsError as exc:
            raise DemoError(str(exc)) from None
        from stream.kafka.topics import create_topics

        asyncio.run(create_topics(settings))
        env = {
            **os.environ,
            "CRM_KPI_KAFKA_BOOTSTRAP_SERVERS": kafka.url,
            "CRM_KPI_REDIS_URL": redis.url,
            "CRM_KPI_WORKER_PORT": str(worker_port),
            "CRM_KPI_EXPORTER_PORT": str(exporter_port),
            "CRM_KPI_EXPORTER_HOST": "127.0.0.1",
            "CRM_KPI_LOG_LEVEL": os.environ.get("CRM_KPI_LOG_LEVEL", "warning"),
        }
        state.children.append(_spawn("worker", env, workdir))
        state.children.append(_spawn("exporter", env, workdir))
        exporter_url = f"http://127.0.0.1:{exporter_port}/metrics"
        worker_url = f"http://127.0.0.1:{worker_port}/metrics"
        pids = {s.name.split()[0]: s.proc.pid for s in state.servers} | {c.name: c.proc.pid for c in state.children}
        state.info.update(
            pid=os.getpid(),
            pids=pids,
            ports={"kafka": kafka.port, "redis": redis.port, "worker": worker_port, "exporter": exporter_port},
            urls={"exporter": exporter_url, "worker": worker_url, "kafka": kafka.url, "redis": redis.url},
            logs=str(workdir),
            banner=f"KPI gauges {exporter_url} · worker metrics {worker_url}",
        )
        console.print(f"Kafka (Tansu)   {kafka.url}")
        console.print(f"Redis           {redis.url}")
        console.print(f"KPI gauges      {exporter_url}   (crm-kpi exporter)")
        console.print(f"worker metrics  {worker_url}   (crm-kpi worker)")
        console.print(f"logs            {workdir}")
        console.print("pids " + " ".join(f"{k}={v}" for k, v in pids.items()))
        console.print(
            f"also try: CRM_KPI_REDIS_URL={redis.url} crm-kpi kpis   |   "
            f"CRM_KPI_KAFKA_BOOTSTRAP_SERVERS={kafka.url} crm-kpi simulate --incident slow-responses"
        )
        _wait_ready(state, {"exporter": exporter_url, "worker": worker_url}, opts.ready_timeout_s)
        console.print("ready: backfilling the last " + _hours(opts.history_s) + " of simulated events, then live")
        snap = asyncio.run(_live_view(settings, opts, state, console))
    except KeyboardInterrupt:
        state.reason = "interrupted"
    except DemoError as exc:
        console.print(f"[red]crm-kpi demo: {exc}[/red]")
        state.reason, code = "error", 1
    except Exception as exc:
        console.print(f"[red]crm-kpi demo failed: {exc!r}[/red]")
        state.reason, code = "error", 1
    finally:
        # Nothing interrupts the shutdown itself; each step has its own time limit.
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        for child in state.children:  # all at once, then wait for each
            if child.proc.poll() is None:
                child.proc.terminate()
        for child in state.children:
            child.stop()
        for server in reversed(state.servers):
            server.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum, old in handlers.items():
            signal.signal(signum, old)
    if snap is not None and not console.is_terminal:
        from stream.exporter.tables import kpi_table

        console.print((kpi_table if opts.full_table else headline_table)(snap))
    stats = state.stats
    console.print(
        f"stopped ({state.reason}): {stats.published:,} events published; worker, exporter, Kafka and Redis "
        f"stopped (exit codes {', '.join(str(c.proc.returncode) for c in state.children) or '-'})"
    )
    if opts.json_out is not None:
        report = {
            **{k: v for k, v in state.info.items() if k != "banner"},
            "reason": state.reason,
            "published": stats.published,
            "by_type": dict(stats.by_type),
            "samples": state.samples,
            "exit_codes": {c.name: c.proc.returncode for c in state.children},
        }
        opts.json_out.write_text(json.dumps(report, indent=2))
    if code == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        console.print(f"logs kept in {workdir}")
    return code


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g}h" if seconds >= 3600 else f"{seconds / 60:g}m"
