"""`crm-kpi simulate`: publish the synthetic CRM stream (`stream.devtools.synthetic_crm`) to Kafka.

Pacing: an event is published as soon as possible, but never before its event
time (`occurred_at`) has come on the wall clock. One rule covers every case:

* **Backfill** (`--start` in the past): every event whose time has already
  passed goes out as fast as the broker takes it.
* **Live** (`--start` now, the default): each event is held until its time
  comes. Follow-ups planned for later (an answer in 40 minutes, a payment in
  three weeks) therefore arrive when they happen, never early, and the worker
  never sees a future timestamp.
* A backfill that runs into the present simply continues live; `crm-kpi demo`
  uses this to seed two hours of history and then keep going.

`--rate` sets the intensity of the simulated world: the long-run mean number of
events per second of event time (`SimConfig.rate`). Live, event time *is* wall
time, so it is also the mean wall-clock publish rate; the instantaneous rate
follows the simulator's weekly profile (about 2x the mean on weekday business
hours UTC, 0.15-0.3x at night and at weekends) and starts near half of it until
the follow-ups of the first episodes mature. In a backfill `--rate` decides
how dense the history is, not how fast it is sent.

Determinism: the events depend only on the seed, `--customers`, `--rate`,
`--incident`s and `--start` (the simulator's ids embed seed and start); every
message is keyed by `customer_id` (else `event_id`), so the same run lands in
the same partitions in the same order.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from schemas import TOPIC_FAMILY
from stream.devtools.synthetic_crm import SimConfig, generate
from stream.kafka.clients import check_kafka, kafka_client_options
from stream.settings import Settings

__all__ = ["SimulateStats", "event_key", "parse_start", "simulate"]

_DRAIN_EVERY = 2000  # await delivery of at most this many in-flight sends
_YIELD_EVERY = 250  # let other tasks (a live view, signal handlers) run during a backfill


def parse_start(text: str) -> datetime:
    """An RFC 3339 timestamp ('2026-01-05T09:00:00Z', offsets allowed) as an aware UTC datetime."""
    try:
        value = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r} (e.g. 2026-01-05T09:00:00Z)") from None
    if value.utcoffset() is None:
        raise ValueError(f"timestamp {text!r} needs a time zone (Z or +hh:mm)")
    return value.astimezone(UTC)


def event_key(event: dict[str, Any]) -> bytes:
    """The message key (docs/events.md): customer_id, else the event's own id."""
    return str(event.get("customer_id") or event["event_id"]).encode()


@dataclass
class SimulateStats:
    """What a simulation run has done so far (updated while it runs)."""

    published: int = 0
    backfilled: int = 0
    """Events whose time had already passed when they were reached (sent without waiting)."""
    live: bool = False
    """True once the run caught up with the wall clock (it waits for event times from then on)."""
    event_time: float | None = None
    """Epoch seconds of the last event published."""
    by_type: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def seconds(self) -> float:
        """Wall seconds since the run started (until it finished)."""
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        """Mean published events per wall second."""
        s = self.seconds
        return self.published / s if s > 0 else 0.0


async def _wait(delay: float, stop: asyncio.Event | None) -> bool:
    """Sleep `delay` seconds; True if `stop` was set meanwhile."""
    if stop is None:
        await asyncio.sleep(delay)
        return False
    try:
        await asyncio.wait_for(stop.wait(), delay)
    except TimeoutError:
        return False
    return True


async def simulate(
    settings: Settings,
    config: SimConfig,
    start: datetime,
    *,
    events: int | None = None,
    duration_s: float | None = None,
    stop: asyncio.Event | None = None,
    stats: SimulateStats | None = None,
    on_progress: Callable[[SimulateStats], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> SimulateStats:
    """Generate and publish events from `start`, each no earlier than its event time.

    Stops after `events` events, after `duration_s` seconds of event time from
    `start`, when `stop` is set, or never. Everything sent is acknowledged
    (acks=all) before this returns. `on_progress` is called every few hundred
    events and whenever the run starts waiting for the clock.
    """
    from stream.kafka.topics import require_topics

    await require_topics(settings, settings.event_topics())  # clients never create topics
    stats = stats if stats is not None else SimulateStats()
    # Reachable, credentials accepted, Write on every event topic: else one line, before producing.
    await check_kafka(settings, write=list(settings.event_topics()))
    producer = AIOKafkaProducer(
        **kafka_client_options(settings), acks="all", linger_ms=5, max_batch_size=1 << 20
    )
    await producer.start()
    pending: list[asyncio.Future[Any]] = []

    async def drain() -> None:
        for fut in pending:
            await fut
        pending.clear()

    try:
        for event in generate(config, start, count=events, duration_s=duration_s):
            if stop is not None and stop.is_set():
                break
            at = datetime.fromisoformat(event["occurred_at"]).timestamp()
            ahead = at - clock()
            if ahead > 0:
                stats.live = True
                await drain()  # what is due is delivered now, not after the wait
                if on_progress is not None:
                    on_progress(stats)
                if await _wait(ahead, stop):
                    break
            elif not stats.live:
                stats.backfilled += 1
            topic = settings.topic(TOPIC_FAMILY[event["type"]])
            pending.append(await producer.send(topic, value=orjson.dumps(event), key=event_key(event)))
            stats.published += 1
            stats.event_time = at
            stats.by_type[event["type"]] += 1
            if len(pending) >= _DRAIN_EVERY:
                await drain()
            if stats.published % _YIELD_EVERY == 0:
                if on_progress is not None:
                    on_progress(stats)
                await asyncio.sleep(0)
        await drain()
    finally:
        try:
            await producer.stop()
        finally:
            stats.finished = time.monotonic()
    if on_progress is not None:
        on_progress(stats)
    return stats


def run_cli(
    settings: Settings,
    config: SimConfig,
    start: datetime,
    events: int | None,
    duration_s: float | None,
    progress_bar: bool,
) -> SimulateStats:
    """`crm-kpi simulate`: run `simulate` with a rich progress bar; SIGINT/SIGTERM stop it cleanly."""
    import signal

    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, soft_wrap=True)
    start_s = start.timestamp()

    def describe(stats: SimulateStats) -> str:
        when = "-" if stats.event_time is None else datetime.fromtimestamp(stats.event_time, UTC).strftime("%F %T")
        phase = "live" if stats.live else "backfill"
        return f"{phase} · {stats.published:,} events · event time {when}Z · {stats.rate:,.0f}/s"

    async def main(progress: Progress | None) -> SimulateStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        total = float(events) if events is not None else duration_s
        task = progress.add_task("simulate", total=total) if progress is not None else None

        def update(stats: SimulateStats) -> None:
            if progress is None or task is None:
                return
            if events is not None:
                done = float(stats.published)
            elif duration_s is not None and stats.event_time is not None:
                done = min(duration_s, stats.event_time - start_s)
            else:
                done = 0.0
            progress.update(task, completed=done, description=describe(stats))

        try:
            return await simulate(
                settings, config, start, events=events, duration_s=duration_s, stop=stop, on_progress=update
            )
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    if not progress_bar:
        return asyncio.run(main(None))
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        return asyncio.run(main(progress))
