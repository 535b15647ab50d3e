"""Fold one batch of new events into one delta for Redis (pure, no I/O).

The worker sends Redis one increment per (bucket, counter) for the whole batch,
not one per event; entity states are merged here and only their changes leave.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream.joins import KINDS_BY_TYPE, Contribution, JoinContext
from stream.keys import Keys
from stream.kpis import EVENT_MEMBERS, KpiConfig, event_fields
from stream.windows import US, Window

__all__ = ["BatchDelta", "FoldContext", "entity_keys", "fold"]


@functools.lru_cache(maxsize=1)
def settings_config() -> KpiConfig:
    """The KPI settings from the environment, read once per process (default of FoldContext.config)."""
    from stream.config import load_settings

    return load_settings().kpi_config()


@dataclass(frozen=True)
class FoldContext:
    """Everything the fold needs besides the events: clock, windows, settings."""

    now_s: float
    windows: tuple[Window, ...]
    lead_sources: frozenset[str]
    sla: Mapping[str, float]
    keys: Keys
    config: KpiConfig = field(default_factory=settings_config)


@dataclass
class BatchDelta:
    """A batch's whole effect on Redis, and what it counted."""

    buckets: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)
    expire_at: dict[tuple[str, int], int] = field(default_factory=dict)
    # Exact distinct counts: (window label, bucket, name) -> {member: count delta}.
    distinct: dict[tuple[str, int, str], dict[str, int]] = field(default_factory=dict)
    entity_writes: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    persistent: set[str] = field(default_factory=set)  # entity keys written without TTL
    zadd: dict[tuple[str, str], float] = field(default_factory=dict)
    zrem: set[tuple[str, str]] = field(default_factory=set)
    counters: dict[str, int] = field(default_factory=dict)
    processed: Counter[str] = field(default_factory=Counter)
    late: int = 0
    newest_us: int | None = None


def entity_keys(events: Sequence[Any], keys: Keys) -> list[str]:
    """Redis keys of every entity state the events touch (to read before folding)."""
    out: dict[str, None] = {}
    for ev in events:
        for kind in KINDS_BY_TYPE.get(ev.type, ()):
            entity_id = kind.id_of(ev)
            if entity_id is not None:
                out[keys.entity(kind.tag, entity_id)] = None
    return list(out)


class _Buckets:
    """Collects (t_us, field, delta) items per fine bucket, then spreads them over the windows.

    Every window's bucket width is a multiple of the fine width (their gcd), so
    a fine bucket lies inside exactly one bucket of each window: the hot loop
    does one dict update per counter, the spreading once per distinct bucket.
    """

    def __init__(self, ctx: FoldContext) -> None:
        self._windows = ctx.windows
        self._fine_us = math.gcd(*(w.bucket_seconds for w in ctx.windows)) * US
        self._first = [w.first_bucket(ctx.now_s) for w in ctx.windows]
        self.oldest_us = int((ctx.now_s - max(w.seconds for w in ctx.windows)) * US)
        self.fine: dict[tuple[int, str], int] = {}
        self.members: dict[tuple[int, str, str], int] = {}

    def add(self, t_us: int, items: Iterable[tuple[str, int]]) -> bool:
        """Add items at event time t_us; False (nothing added) when t_us is late."""
        if t_us < self.oldest_us:
            return False
        m = t_us // self._fine_us
        fine = self.fine
        for name, value in items:
            key = (m, name)
            fine[key] = fine.get(key, 0) + value
        return True

    def add_member(self, t_us: int, name: str, member: str, value: int) -> None:
        """Count `member` of distinct set `name` at t_us (late times are dropped)."""
        if t_us < self.oldest_us:
            return
        key = (t_us // self._fine_us, name, member)
        self.members[key] = self.members.get(key, 0) + value

    def _targets(self, m: int) -> Iterator[tuple[Window, int]]:
        """(window, bucket) of every window whose range holds fine bucket m."""
        start_s = m * (self._fine_us // US)
        for window, first in zip(self._windows, self._first, strict=True):
            k = start_s // window.bucket_seconds
            if k >= first:
                yield window, k

    def spread(self, delta: BatchDelta) -> None:
        """Write the collected counters into each window's buckets (non-zero ones only)."""
        for (m, name), value in self.fine.items():
            if not value:
                continue
            for window, k in self._targets(m):
                key = (window.label, k)
                target = delta.buckets.get(key)
                if target is None:
                    target = delta.buckets[key] = {}
                    delta.expire_at[key] = window.expire_at(k)
                target[name] = target.get(name, 0) + value
        for (m, name, member), value in self.members.items():
            if not value:
                continue
            for window, k in self._targets(m):
                dkey = (window.label, k, name)
                counts = delta.distinct.get(dkey)
                if counts is None:
                    counts = delta.distinct[dkey] = {}
                    delta.expire_at.setdefault((window.label, k), window.expire_at(k))
                counts[member] = counts.get(member, 0) + value


def fold(events: Sequence[tuple[Any, int]], states: Mapping[str, str | None], ctx: FoldContext) -> BatchDelta:
    """Fold new events ((event, occurred_at in µs), batch order) over entity states read from Redis.

    `states` maps every key of `entity_keys` to its raw value (None if absent).
    Late events (older than the longest window) change no window but still
    update entity state, which counts every valid event however old.
    """
    delta = BatchDelta()
    buckets = _Buckets(ctx)
    lead_sources = ctx.lead_sources
    lost_reasons = ctx.config.lost_reasons
    touched: dict[str, tuple[Any, Any, str, Any]] = {}  # key -> (old, new, id, kind)
    kinds_by_type = KINDS_BY_TYPE
    for ev, t_us in events:
        kind_name = ev.type
        delta.processed[kind_name] += 1
        if delta.newest_us is None or t_us > delta.newest_us:
            delta.newest_us = t_us
        if not buckets.add(t_us, event_fields(ev, lead_sources, lost_reasons)):
            delta.late += 1
        members = EVENT_MEMBERS.get(kind_name)
        if members is not None:
            name, member = members(ev)
            buckets.add_member(t_us, name, member, 1)
        for kind in kinds_by_type.get(kind_name, ()):
            entity_id = kind.id_of(ev)
            if entity_id is not None:
                key = ctx.keys.entity(kind.tag, entity_id)
                if key in touched:
                    old, cur, _, _ = touched[key]
                else:
                    old = cur = kind.decode(states.get(key))
                touched[key] = (old, cur.merge(ev, t_us), entity_id, kind)

    for key, (old, new, entity_id, _kind) in touched.items():
        old_raw, new_raw = old.encode(), new.encode()
        if old_raw == new_raw:
            continue
        delta.entity_writes[key] = (states.get(key), new_raw)
        if new.persistent():
            delta.persistent.add(key)
        jctx = JoinContext(entity_id, ctx.sla, ctx.config)
        _apply_difference(delta, buckets, old.contribute(jctx), new.contribute(jctx))

    buckets.spread(delta)
    return delta


def _apply_difference(delta: BatchDelta, buckets: _Buckets, old: Contribution, new: Contribution) -> None:
    for t_us, name, value in new.window:
        buckets.add(t_us, [(name, value)])
    for t_us, name, value in old.window:
        buckets.add(t_us, [(name, -value)])
    for t_us, name, member, value in new.members:
        buckets.add_member(t_us, name, member, value)
    for t_us, name, member, value in old.members:
        buckets.add_member(t_us, name, member, -value)
    for name in old.counters.keys() | new.counters.keys():
        d = new.counters.get(name, 0) - old.counters.get(name, 0)
        if d:
            delta.counters[name] = delta.counters.get(name, 0) + d
    for zset, member, _score in old.zmembers - new.zmembers:
        delta.zrem.add((zset, member))
        delta.zadd.pop((zset, member), None)
    for zset, member, score in new.zmembers - old.zmembers:
        delta.zadd[(zset, member)] = score
        delta.zrem.discard((zset, member))
