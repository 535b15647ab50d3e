"""A simulated CRM replayed through the product's pipeline on a virtual clock, for fast alert checks.

The events of `stream.devtools.synthetic_crm` go through what the worker runs on
each batch - `decode` of the JSON bytes, `fold`, and the atomic Lua write of
`AsyncStore.apply` on a real Redis - with the virtual time as the clock, and
the exporter's read (`read_snapshot`, `kpi_samples`) answers at any virtual
instant. Kafka and the worker process are left out: their behaviour is
covered by the end-to-end tests; this is the sped-up demo the alert tests
evaluate the shipped rules over (`promtool test rules`, Prometheus's own
rule engine on a simulated clock).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from schemas import TOPIC_FAMILY
from stream.events.decode import REASONS, decode
from stream.events.fold import FoldContext, FoldMemo, entity_keys, fold
from stream.events.windows import make_windows
from stream.exporter.collector import kpi_samples
from stream.kpis import fold_rules
from stream.settings import Settings
from stream.store import AsyncStore, Keys, Snapshot, read_snapshot

_US = 1_000_000


@dataclass
class Replay:
    """Applies events to Redis as the worker would, with `now` given by the caller (unix s)."""

    client: aioredis.Redis
    reader: redis.Redis
    settings: Settings
    processed: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    newest_s: float | None = None
    _offset: int = 0

    def __post_init__(self) -> None:
        s = self.settings
        self.keys = Keys(s.redis_key_prefix)
        self.windows = make_windows(s.windows)
        self.rules = fold_rules(s.kpi_config())
        self.store = AsyncStore(self.client, self.keys, s.dedupe_horizon, s.state_ttl)
        self.memo = FoldMemo()

    async def apply(self, events: Iterable[dict[str, Any]], now_s: float) -> None:
        """One batch: every event must be valid at `now_s`, as the worker would find it."""
        now_us = int(now_s * _US)
        skew_us = int(self.settings.max_future_skew * _US)
        valid: list[tuple[Any, int]] = []
        for event in events:
            out = decode(orjson.dumps(event), TOPIC_FAMILY[event["type"]], now_us, 1 << 20, skew_us)
            if isinstance(out, tuple):
                valid.append(out)
            else:
                self.rejected[out.reason] += 1
        if not valid:
            return
        ctx = FoldContext(now_s, self.windows, self.rules, self.keys.entity_prefix)
        keys = entity_keys([ev for ev, _ in valid], ctx)
        states = await self.store.read_states(keys)
        delta = fold(valid, states, ctx, self.memo)
        new = self._offset + len(valid)
        outcome = await self.store.apply(delta, [("sim:0", self._offset or -1, new)], [], now_s)
        assert outcome.ok, outcome
        self.memo.remember(delta)
        self._offset = new
        self.processed.update(delta.processed)
        if delta.newest_us is not None:
            self.newest_s = max(self.newest_s or 0.0, delta.newest_us / _US)

    def snapshot(self, now_s: float) -> Snapshot:
        """What the exporter reads at `now_s`."""
        s = self.settings
        return read_snapshot(self.reader, self.keys, self.windows, s.kpi_config(), now_s, s.max_future_skew)

    def samples(self, now_s: float) -> list[tuple[str, dict[str, str], float]]:
        """Every KPI series the exporter serves at `now_s`."""
        return list(kpi_samples(self.snapshot(now_s)))


# --- the replay as Prometheus would have scraped it ------------------------------------------------

EXPORTER = {"job": "crm-kpi-exporter", "instance": "exporter:9464"}
WORKER = {"job": "crm-kpi-worker", "instance": "worker:6066"}
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Scrapes:
    """Series sampled once per step (1 minute), as `promtool test rules` input."""

    steps: int = 0
    values: dict[SeriesKey, dict[int, float]] = field(default_factory=dict)

    def add(self, name: str, labels: dict[str, str], value: float, step: int) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.values.setdefault(key, {})[step] = value
        self.steps = max(self.steps, step + 1)

    def record(self, replay: Replay, now_s: float, step: int) -> None:
        """What the exporter and a worker would serve at `now_s`.

        The worker's operational series are those of a healthy worker that applied
        what the replay applied: targets up, no dead letters, no consumer lag.
        """
        for name, labels, value in replay.samples(now_s):
            self.add(name, {**labels, **EXPORTER}, value, step)
        self.add("up", EXPORTER, 1, step)
        self.add("crm_exporter_redis_up", EXPORTER, 1, step)
        self.add("up", WORKER, 1, step)
        for event_type in TOPIC_FAMILY:
            self.add("crm_events_processed_total", {"type": event_type, **WORKER}, replay.processed[event_type], step)
        for reason in REASONS:
            self.add("crm_events_invalid_total", {"reason": reason, **WORKER}, replay.rejected[reason], step)
        self.add("crm_redis_errors_total", WORKER, 0, step)
        lag = now_s - replay.newest_s if replay.newest_s is not None else 0.0
        self.add("crm_event_lag_seconds", WORKER, lag, step)
        for family in sorted(set(TOPIC_FAMILY.values())):
            self.add("crm_kafka_consumer_lag", {"topic": f"crm.{family}", "partition": "0", **WORKER}, 0, step)

    def input_series(self) -> list[dict[str, str]]:
        out = []
        for (name, labels), by_step in sorted(self.values.items()):
            matchers = ", ".join(f'{k}="{v}"' for k, v in labels)
            values = " ".join(repr(by_step[i]) if i in by_step else "_" for i in range(self.steps))
            out.append({"series": f"{name}{{{matchers}}}", "values": values})
        return out


async def replay_world(
    replay: Replay, events: Iterable[dict[str, Any]], end_s: float, minutes: int, batch: int = 2000
) -> Scrapes:
    """Apply `events` up to `end_s`: the history in batches at once, like the demo's backfill, then
    minute by minute over the last `minutes`, recording what Prometheus would scrape at each
    minute (step 0 .. minutes)."""
    scrapes = Scrapes()
    first_step_s = end_s - 60 * minutes
    pending: list[dict[str, Any]] = []
    step = 0

    async def next_minute() -> None:
        """Apply what arrived during the minute before this step, then scrape."""
        nonlocal pending, step
        now_s = first_step_s + 60 * step
        if pending:
            await replay.apply(pending, now_s)
            pending = []
        scrapes.record(replay, now_s, step)
        step += 1

    for event in events:
        at = datetime.fromisoformat(event["occurred_at"]).timestamp()
        while at > first_step_s + 60 * step and step <= minutes:
            await next_minute()
        if step > minutes:
            break
        pending.append(event)
        if len(pending) >= batch and step == 0:  # the backfill, applied as the demo's worker does: now
            await replay.apply(pending, first_step_s)
            pending = []
    while step <= minutes:
        await next_minute()
    return scrapes
