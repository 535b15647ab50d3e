"""`crm-kpi demo`: the embedded default (docs/configuration.md) in one command.

It starts, on 127.0.0.1 and free ports (unless given):

1. a Tansu broker and a Redis server (`stream.devtools.servers`), then creates the topics;
2. a worker and the exporter as child processes (`python -m stream worker|exporter`),
   configured through `CRM_KPI_*` variables pointing at those servers, both
   serving /metrics on loopback only;
3. the simulator in-process (`stream.devtools.simulate`), starting `--history` ago: the
   past is backfilled at full speed, then events are published live, each when
   its event time comes; an `--incident` begins `INCIDENT_LEAD_S` before now,
   so its alerts show from the start;

then prints where to look and shows a live KPI table (`demo_view`) read from
Redis every `refresh` seconds. Ctrl-C, SIGTERM, SIGHUP or `--duration` stop it:
the simulator flushes, the worker and the exporter get SIGTERM and are waited
for (SIGKILL after a grace period, `stream.devtools.processes`), then the
servers are stopped the same way. The temporary folder (logs, Faust data) is
removed whatever happened to the output - a closed pipe (`crm-kpi demo | head`)
stops the demo like Ctrl-C - and kept only when something failed, to read its logs.

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
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.text import Text

from stream.devtools.demo_view import headline_table, status_line, window_events
from stream.devtools.processes import Child, shielded_from_ctrl_c, spawn, stop_all
from stream.devtools.servers import DemoExtraMissing, EmbeddedServer, free_port, start_kafka, start_redis
from stream.devtools.simulate import SimulateStats, simulate
from stream.devtools.synthetic_crm import INCIDENT_LEAD_S, SimConfig
from stream.settings import Settings, SettingsError, load_settings
from stream.store import Snapshot

__all__ = ["DemoOptions", "run_demo"]

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class DemoOptions:
    """What `crm-kpi demo` runs."""

    customers: int = 20_000
    rate: float | None = None
    seed: int | None = None
    incidents: frozenset[str] = frozenset()
    history_s: float = 7 * 86400.0
    duration_s: float | None = None
    worker_port: int | None = None
    exporter_port: int | None = None
    refresh_s: float = 1.5
    json_out: Path | None = None
    full_table: bool = False
    ready_timeout_s: float = 60.0


class DemoError(Exception):
    """The demo cannot go on (a child exited, a port is taken...)."""


class _OutputGone(Exception):
    """The demo's output was closed (a pipe whose reader left): stop like Ctrl-C."""


@dataclass
class _State:
    servers: list[EmbeddedServer] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    stats: SimulateStats = field(default_factory=SimulateStats)
    reason: str = "duration"


class _DemoConsole(Console):
    """rich's console, except that a closed output stops the demo in order rather than exiting."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        with contextlib.suppress(OSError, ValueError):  # no second EPIPE when Python flushes at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.file.fileno())
        raise _OutputGone


class _Out:
    """The console, turned silent once its reader has gone (EPIPE), so shutdown still runs."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.gone = False

    def print(self, *objects: RenderableType, strict: bool = False) -> None:
        if self.gone:
            if strict:
                raise _OutputGone
            return
        try:
            self.console.print(*objects)
            self.console.file.flush()
        except (_OutputGone, BrokenPipeError, ValueError):  # ValueError: the file was closed under us
            self.gone = True
            self.console.quiet = True
            if strict:
                raise _OutputGone from None


def _spawn(command: str, env: dict[str, str], workdir: Path) -> Child:
    return spawn(
        command,
        [sys.executable, "-m", "stream", command],
        env=env,
        cwd=workdir,  # Faust writes its data directory there
        log=workdir / f"{command}.log",
        shield=True,
        die_with_parent=True,
    )


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _check_children(state: _State) -> None:
    for child in state.children:
        if child.proc.poll() is not None:
            raise DemoError(f"{child.name} exited with code {child.proc.returncode}:\n{child.tail()}")


def _wait_ready(state: _State, urls: dict[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting = dict(urls)
    while waiting:
        _check_children(state)
        for name, url in list(waiting.items()):
            if _http_ok(url):
                del waiting[name]
        if waiting and time.monotonic() > deadline:
            raise DemoError(f"not ready after {timeout:.0f}s: {', '.join(sorted(waiting))}")
        time.sleep(0.2)


def _sim_config(opts: DemoOptions, seed: int, now: float) -> tuple[SimConfig, datetime]:
    start = datetime.fromtimestamp(now - opts.history_s, UTC)
    incident_start = max(start, datetime.fromtimestamp(now - INCIDENT_LEAD_S, UTC))
    config = SimConfig(
        seed=seed, customers=opts.customers, rate=opts.rate, incidents=opts.incidents, incident_start=incident_start
    )
    return config, start


async def _live_view(settings: Settings, opts: DemoOptions, state: _State, out: _Out) -> Snapshot | None:
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
    config, start = _sim_config(opts, seed, time.time())
    state.info["seed"] = seed
    state.stats = SimulateStats()
    sim = asyncio.create_task(simulate(settings, config, start, stop=stop, stats=state.stats))
    client = sync_redis(settings)
    began = time.monotonic()
    snap: Snapshot | None = None
    console = out.console
    live = (
        Live(console=console, auto_refresh=False, transient=False, vertical_overflow="crop")
        if console.is_terminal
        else None
    )
    try:
        with live if live is not None else contextlib.nullcontext():
            while True:
                remaining = None if opts.duration_s is None else opts.duration_s - (time.monotonic() - began)
                try:
                    snap = await asyncio.to_thread(snapshot, client, settings)
                except Exception as exc:  # Redis briefly busy: show the last figures
                    out.print(f"[yellow]reading Redis failed: {exc}[/yellow]")
                events = window_events(snap) if snap is not None else {}
                stats = state.stats
                state.samples.append(
                    {
                        "t": round(time.time(), 3),
                        "published": stats.published,
                        "live": stats.live,
                        "window_events": events,
                    }
                )
                status = status_line(
                    stats.published, stats.live, stats.event_time, opts.customers, opts.incidents, remaining
                )
                if live is not None:
                    table = (kpi_table if opts.full_table else headline_table)(snap) if snap is not None else Text("")
                    try:
                        live.update(Group(Text(state.info["banner"]), Text(status, style="bold"), table), refresh=True)
                    except (_OutputGone, BrokenPipeError):
                        out.gone = True
                        raise _OutputGone from None
                else:
                    shown = ", ".join(f"{w}={int(v):,}" for w, v in events.items()) or "none yet"
                    out.print(f"{time.strftime('%H:%M:%S')} {status} · window events: {shown}", strict=True)
                _check_children(state)
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
            out.print(f"[yellow]simulator: {exc!r}[/yellow]")
        client.close()
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    return snap


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _start(opts: DemoOptions, state: _State, workdir: Path, out: _Out) -> Settings:
    """Servers, topics, worker and exporter; prints where to look. Returns the demo's settings."""
    with shielded_from_ctrl_c():
        state.servers.append(start_kafka())
    with shielded_from_ctrl_c():
        state.servers.append(start_redis())
    kafka, redis = state.servers
    worker_port = opts.worker_port or free_port()
    exporter_port = opts.exporter_port or free_port()
    try:
        settings = load_settings(
            kafka_bootstrap_servers=kafka.url,
            redis_url=redis.url,
            worker_port=worker_port,
            worker_host=_LOOPBACK,
            exporter_port=exporter_port,
            exporter_host=_LOOPBACK,
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
        "CRM_KPI_WORKER_HOST": _LOOPBACK,
        "CRM_KPI_EXPORTER_PORT": str(exporter_port),
        "CRM_KPI_EXPORTER_HOST": _LOOPBACK,
        "CRM_KPI_LOG_LEVEL": os.environ.get("CRM_KPI_LOG_LEVEL", "warning"),
    }
    state.children.append(_spawn("worker", env, workdir))
    state.children.append(_spawn("exporter", env, workdir))
    exporter_url = f"http://{_LOOPBACK}:{exporter_port}/metrics"
    worker_url = f"http://{_LOOPBACK}:{worker_port}/metrics"
    pids = {s.name.split()[0]: s.proc.pid for s in state.servers} | {c.name: c.proc.pid for c in state.children}
    state.info.update(
        pid=os.getpid(),
        pids=pids,
        ports={"kafka": kafka.port, "redis": redis.port, "worker": worker_port, "exporter": exporter_port},
        urls={"exporter": exporter_url, "worker": worker_url, "kafka": kafka.url, "redis": redis.url},
        logs=str(workdir),
        banner=f"KPI gauges {exporter_url} · worker metrics {worker_url}",
    )
    out.print(f"Kafka (Tansu)   {kafka.url}", strict=True)
    out.print(f"Redis           {redis.url}", strict=True)
    out.print(f"KPI gauges      {exporter_url}   (crm-kpi exporter)", strict=True)
    out.print(f"worker metrics  {worker_url}   (crm-kpi worker)", strict=True)
    out.print(f"logs            {workdir}", strict=True)
    out.print("pids " + " ".join(f"{k}={v}" for k, v in pids.items()), strict=True)
    out.print(
        f"also try: CRM_KPI_REDIS_URL={redis.url} crm-kpi kpis   |   "
        f"CRM_KPI_KAFKA_BOOTSTRAP_SERVERS={kafka.url} crm-kpi simulate --incident slow-responses",
        strict=True,
    )
    _wait_ready(state, {"exporter": exporter_url, "worker": worker_url}, opts.ready_timeout_s)
    out.print(
        f"ready: backfilling the last {_span(opts.history_s)} of a {opts.customers:,}-customer CRM, then live",
        strict=True,
    )
    return settings


def run_demo(opts: DemoOptions, console: Console | None = None) -> int:
    """Run the demo until `duration_s`, a stop signal or a closed output; return the exit code."""
    if console is None:
        console = _DemoConsole(soft_wrap=True)
    out = _Out(console)
    state = _State()
    workdir = Path(tempfile.mkdtemp(prefix="crm-kpi-demo-"))
    handlers: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        handlers[sig] = signal.signal(sig, _raise_interrupt)
    code = 0
    snap: Snapshot | None = None
    try:
        try:
            settings = _start(opts, state, workdir, out)
            snap = asyncio.run(_live_view(settings, opts, state, out))
        except KeyboardInterrupt:
            state.reason = "interrupted"
        except _OutputGone:
            state.reason = "output closed"
        except (DemoError, DemoExtraMissing) as exc:
            out.print(f"[red]crm-kpi demo: {exc}[/red]")
            state.reason, code = "error", 1
        except Exception as exc:
            out.print(f"[red]crm-kpi demo failed: {exc!r}[/red]")
            state.reason, code = "error", 1
        finally:
            # Nothing interrupts the shutdown itself; each step has its own time limit.
            for sig in _STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            stop_all([c.proc for c in state.children])
            for server in reversed(state.servers):
                server.stop()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for signum, old in handlers.items():
                signal.signal(signum, old)
        _report(opts, state, snap, out)
    finally:
        if code == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            out.print(f"logs kept in {workdir}")
    return code


def _report(opts: DemoOptions, state: _State, snap: Snapshot | None, out: _Out) -> None:
    if snap is not None and not out.console.is_terminal:
        from stream.exporter.tables import kpi_table

        out.print((kpi_table if opts.full_table else headline_table)(snap))
    stats = state.stats
    codes = ", ".join(str(c.proc.returncode) for c in state.children) or "-"
    out.print(
        f"stopped ({state.reason}): {stats.published:,} events published; worker, exporter, Kafka and Redis "
        f"stopped (exit codes {codes})"
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


def _span(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:g} days"
    return f"{seconds / 3600:g}h" if seconds >= 3600 else f"{seconds / 60:g}m"
