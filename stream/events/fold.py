"""Fold one batch of new events into one delta for Redis (pure, no I/O).

The worker sends Redis one increment per (bucket, counter) for the whole batch,
not one per event; entity states are merged here and only their changes leave.
What to count comes from the KPI domain as `FoldRules` (`stream.kpis.fold_rules`),
so this module knows windows and entity states, not KPIs.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream.events.entities import Contribution, EntityKind, EntityState
from stream.events.windows import US, Window

__all__ = ["BatchDelta", "FoldContext", "FoldMemo", "FoldRules", "entity_keys", "fold"]


@dataclass(frozen=True, eq=False)
class FoldRules:
    """What the fold counts, per event type (built by `stream.kpis.fold_rules` from the settings).

    `type_fields`: the field every event of the type adds 1 to at its time;
    `extra_counters`: for the types that count more (leads by source, …),
    `extra(event, config)` gives the further (field, increment) pairs;
    `members`: the (distinct-count name, member) an event adds, for the types
    that have one; `kinds`: the entity kinds an event touches; `config`: what
    `extra_counters` and each entity state's `contribute` receive (the KPI settings).
    """

    # dicts, not Mappings: compiled, the fold's look-ups are then direct dict calls.
    type_fields: dict[str, str]
    extra_counters: dict[str, Callable[[Any, Any], Iterable[tuple[str, int]]]]
    members: dict[str, Callable[[Any], tuple[str, str]]]
    kinds: dict[str, tuple[EntityKind, ...]]
    config: Any


@dataclass(frozen=True)
class FoldContext:
    """Everything the fold needs besides the events: clock (unix s), windows, rules, key layout.

    `entity_prefix(key_tag)` is the Redis key prefix of an entity kind's states
    (`Keys.entity_prefix`); an entity's key is that prefix plus its id.
    """

    now_s: float
    windows: tuple[Window, ...]
    rules: FoldRules
    entity_prefix: Callable[[str], str]


@dataclass
class BatchDelta:
    """A batch's whole effect on Redis, and what it counted."""

    buckets: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)
    expire_at: dict[tuple[str, int], int] = field(default_factory=dict)
    # Exact distinct counts: (window label, bucket, name) -> {member: count delta}.
    distinct: dict[tuple[str, int, str], dict[str, int]] = field(default_factory=dict)
    entity_writes: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    # The written states and what they contribute, for FoldMemo.remember after the write.
    contributions: dict[str, tuple[EntityState, Contribution]] = field(default_factory=dict)
    persistent: set[str] = field(default_factory=set)  # entity keys written without TTL
    zadd: dict[tuple[str, str], float] = field(default_factory=dict)
    zrem: set[tuple[str, str]] = field(default_factory=set)
    counters: dict[str, int] = field(default_factory=dict)
    processed: dict[str, int] = field(default_factory=dict)  # event type -> events folded
    late: int = 0
    newest_us: int | None = None


class FoldMemo:
    """Decoded entity states and their contributions, kept from one batch to the next.

    Keyed by entity key and valid only for the exact raw value Redis returns, so
    a state changed elsewhere (another worker, an expiry) is decoded afresh:
    fold results are identical with or without a memo. A memo belongs to one
    FoldContext's settings (contributions depend on the SLAs and KPI settings).
    Bounded to `limit` entities: the least recently written leave first, so the
    busy entities (a large customer's churn-risk items) stay. `fold` takes the
    entries of the entities a batch changes out of the memo and updates their
    states in place (no copy); `remember` puts them back under their new raw
    values. The worker remembers a batch as soon as it is folded, so that the next
    batch, folded while this one is written, finds them; if that write is refused,
    Redis never holds those raw values, so the entries match nothing and the
    states are decoded afresh.
    """

    def __init__(self, limit: int = 20_000) -> None:
        self.limit = limit
        self.entries: dict[str, tuple[str, EntityState, Contribution]] = {}  # key -> (raw, state, contribution)

    def remember(self, delta: BatchDelta) -> None:
        """Record the entity states `delta` writes (each under its new raw value)."""
        entries, writes = self.entries, delta.entity_writes
        for key, (state, contribution) in delta.contributions.items():
            entries.pop(key, None)  # re-inserted last: dicts keep insertion order
            entries[key] = (writes[key][1], state, contribution)
        excess = len(entries) - self.limit
        if excess > 0:
            for key in list(itertools.islice(entries, excess)):
                del entries[key]


def entity_keys(events: Sequence[Any], ctx: FoldContext) -> list[str]:
    """Redis keys of every entity state the events touch (to read before folding)."""
    out: dict[str, None] = {}
    kinds = _kinds_with_prefix(ctx.rules, ctx.entity_prefix)
    for ev in events:
        for kind, prefix in kinds.get(ev.type, ()):
            entity_id = kind.id_of(ev)
            if entity_id is not None:
                out[prefix + entity_id] = None
    return list(out)


class _Touched:
    """An entity a batch touches: the state read, the state now, its id, and what the
    state read contributes when the memo knows it (None: work it out)."""

    def __init__(self, old: EntityState, new: EntityState, entity_id: str, known: Contribution | None) -> None:
        self.old = old
        self.new = new
        self.entity_id = entity_id
        self.known = known


class _Buckets:
    """Collects (t_us, field, delta) items per fine bucket, then spreads them over the windows.

    A fine bucket's width divides the bucket width of every window holding its
    times, so it lies inside exactly one bucket of each: the hot loop does one
    dict update per counter, the spreading once per distinct fine bucket. The
    width depends on the event's age: the gcd of the bucket widths of the
    windows that still hold it (60 s in the last hour by default, 24 min in the
    last day, …), so a batch replaying days of history spreads few buckets.
    A fine bucket's key is its index at its tier's width times the number of
    tiers, plus the tier.
    """

    def __init__(self, ctx: FoldContext) -> None:
        windows = ctx.windows
        self._windows = windows
        self._first = [w.first_bucket(ctx.now_s) for w in windows]
        self.oldest_us = int((ctx.now_s - max(w.seconds for w in windows)) * US)
        starts = [first * w.bucket_seconds * US for w, first in zip(windows, self._first, strict=True)]
        # Newest first: (earliest time of the tier in µs, fine width in µs). The last tier
        # starts with the longest window, at or before `oldest_us`: every time not late has one.
        self._tiers: list[tuple[int, int]] = []
        for since in sorted(set(starts), reverse=True):
            widths = [w.bucket_seconds for w, start in zip(windows, starts, strict=True) if start <= since]
            self._tiers.append((since, math.gcd(*widths) * US))
        self._n_tiers = len(self._tiers)
        self.fine: dict[int, dict[str, int]] = {}  # fine bucket -> counter -> value
        self.members: dict[tuple[int, str, str], int] = {}
        self._targets_of: dict[int, list[tuple[str, int, int]]] = {}

    def key(self, t_us: int) -> int:
        """The fine bucket of event time t_us (not late)."""
        tiers = self._tiers
        tier = 0
        last = self._n_tiers - 1
        while tier < last and t_us < tiers[tier][0]:
            tier += 1
        return t_us // tiers[tier][1] * self._n_tiers + tier

    def add(self, t_us: int, first: str, more: Iterable[tuple[str, int]] | None) -> bool:
        """Add 1 to `first` and the (name, value) items of `more` at event time t_us.

        False (nothing added) when t_us is late.
        """
        if t_us < self.oldest_us:
            return False
        counts = self._counts(t_us)
        counts[first] = counts.get(first, 0) + 1
        if more is not None:
            for name, value in more:
                counts[name] = counts.get(name, 0) + value
        return True

    def add_one(self, t_us: int, name: str, value: int) -> None:
        """Add one counter at event time t_us (late times are dropped)."""
        if t_us >= self.oldest_us:
            counts = self._counts(t_us)
            counts[name] = counts.get(name, 0) + value

    def _counts(self, t_us: int) -> dict[str, int]:
        # Counters per fine bucket, keyed by name: no (bucket, name) tuple to build and hash per item.
        m = self.key(t_us)
        counts = self.fine.get(m)
        if counts is None:
            counts = self.fine[m] = {}
        return counts

    def add_member(self, t_us: int, name: str, member: str, value: int) -> None:
        """Count `member` of distinct set `name` at t_us (late times are dropped)."""
        if t_us < self.oldest_us:
            return
        key = (self.key(t_us), name, member)
        self.members[key] = self.members.get(key, 0) + value

    def _targets(self, m: int) -> list[tuple[str, int, int]]:
        """(window label, bucket, expiry) of every window whose range holds fine bucket m."""
        found = self._targets_of.get(m)
        if found is None:
            index, tier = divmod(m, self._n_tiers)
            start_s = index * (self._tiers[tier][1] // US)
            found = self._targets_of[m] = [
                (window.label, k, window.expire_at(k))
                for window, first in zip(self._windows, self._first, strict=True)
                if (k := start_s // window.bucket_seconds) >= first
            ]
        return found

    def spread(self, delta: BatchDelta) -> None:
        """Write the collected counters into each window's buckets (non-zero ones only)."""
        buckets, expire_at = delta.buckets, delta.expire_at
        for m, counts in self.fine.items():
            targets = self._targets(m)
            for name, value in counts.items():
                if not value:
                    continue
                for label, k, expiry in targets:
                    key = (label, k)
                    target = buckets.get(key)
                    if target is None:
                        target = buckets[key] = {}
                        expire_at[key] = expiry
                    target[name] = target.get(name, 0) + value
        for (m, name, member), value in self.members.items():
            if not value:
                continue
            for label, k, expiry in self._targets(m):
                dkey = (label, k, name)
                member_counts = delta.distinct.get(dkey)
                if member_counts is None:
                    member_counts = delta.distinct[dkey] = {}
                    expire_at.setdefault((label, k), expiry)
                member_counts[member] = member_counts.get(member, 0) + value


def fold(
    events: Sequence[tuple[Any, int]],
    states: dict[str, str | None],
    ctx: FoldContext,
    memo: FoldMemo | None = None,
) -> BatchDelta:
    """Fold new events ((event, occurred_at in µs), batch order) over entity states read from Redis.

    `states` maps every key of `entity_keys` to its raw value (None if absent).
    Late events (older than the longest window) change no window but still
    update entity state, which counts every valid event however old. `memo`
    only saves work: the caller records the delta's entity writes in it
    (`FoldMemo.remember`), and fold then skips decoding those states and
    recomputing what they contributed when Redis hands back those raw values.
    """
    remembered = memo.entries if memo is not None else {}
    delta = BatchDelta()
    buckets = _Buckets(ctx)
    rules = ctx.rules
    type_fields, extras_of = rules.type_fields, rules.extra_counters
    members_of, config = rules.members, rules.config
    touched: dict[str, _Touched] = {}
    kinds = _kinds_with_prefix(rules, ctx.entity_prefix)
    processed = delta.processed
    newest = -1
    late = 0
    for ev, t_us in events:
        kind_name = ev.type
        processed[kind_name] = processed.get(kind_name, 0) + 1
        if t_us > newest:
            newest = t_us
        extra = extras_of.get(kind_name)
        if not buckets.add(t_us, type_fields[kind_name], None if extra is None else extra(ev, config)):
            late += 1
        members = members_of.get(kind_name)
        if members is not None:
            name, member = members(ev)
            buckets.add_member(t_us, name, member, 1)
        for kind, prefix in kinds.get(kind_name, ()):
            entity_id = kind.id_of(ev)
            if entity_id is not None:
                key = prefix + entity_id
                seen = touched.get(key)
                if seen is not None:
                    seen.new.absorb(ev, t_us)  # the batch's own copy
                    continue
                raw = states.get(key)
                hit = remembered.get(key)
                known: Contribution | None
                old: EntityState
                if hit is not None and hit[0] == raw:
                    # The batch takes the memo's state and absorbs into it, no copy: what it
                    # contributed is known, so the old state is not needed again. The entry
                    # leaves the memo until Redis accepts the write (`remember` puts the new
                    # state back), so a refused write leaves no state holding this batch.
                    del remembered[key]
                    old, known = hit[1], hit[2]
                    new = old
                else:
                    old = kind.decode(raw)
                    known = _NOTHING if raw is None else None  # an entity new to Redis contributed nothing
                    new = old.copy()  # `old` still has to say what it contributed
                new.absorb(ev, t_us)
                touched[key] = _Touched(old, new, entity_id, known)
    delta.late = late
    delta.newest_us = newest if newest >= 0 else None

    for key, entity in touched.items():
        old, new, entity_id, known = entity.old, entity.new, entity.entity_id, entity.known
        # The raw value read is the old state's encoding (encode is canonical), so
        # an unchanged entity costs one encode and no write.
        stored = states.get(key)
        new_raw = new.encode()
        if new_raw == (stored if stored is not None else _empty_encoding(type(new))):
            if old is new and stored is not None and known is not None:
                # Taken from the memo and unchanged: still exactly the state `stored` encodes.
                remembered[key] = (stored, new, known)
            continue
        delta.entity_writes[key] = (stored, new_raw)
        if new.persistent():
            delta.persistent.add(key)
        before = known if known is not None else old.contribute(entity_id, config)
        after = new.contribute(entity_id, config)
        delta.contributions[key] = (new, after)
        _apply_difference(delta, buckets, before, after)

    buckets.spread(delta)
    return delta


@functools.lru_cache(maxsize=8)
def _kinds_with_prefix(
    rules: FoldRules, entity_prefix: Callable[[str], str]
) -> dict[str, tuple[tuple[EntityKind, str], ...]]:
    """Per event type: the entity kinds it touches and their Redis key prefixes."""
    return {
        event_type: tuple((kind, entity_prefix(kind.key_tag)) for kind in kinds)
        for event_type, kinds in rules.kinds.items()
    }


_EMPTY_ENCODINGS: dict[type, str] = {}


def _empty_encoding(cls: type) -> str:
    """Encoding of a state class's empty state (what an absent key reads as)."""
    value = _EMPTY_ENCODINGS.get(cls)
    if value is None:
        value = _EMPTY_ENCODINGS[cls] = cls().encode()
    return value


_NOTHING = Contribution()  # shared, never modified


def _apply_difference(delta: BatchDelta, buckets: _Buckets, old: Contribution, new: Contribution) -> None:
    added, removed = new.window, old.window
    # States mostly grow: what the old state contributed is usually the start of what the
    # new one does (a resolution after a first response), and only the rest needs adding.
    n = len(removed)
    if n and added[:n] == removed:
        added, removed = added[n:], []
    for t_us, name, value in added:
        buckets.add_one(t_us, name, value)
    for t_us, name, value in removed:
        buckets.add_one(t_us, name, -value)
    if new.members or old.members:
        for t_us, name, member, value in new.members:
            buckets.add_member(t_us, name, member, value)
        for t_us, name, member, value in old.members:
            buckets.add_member(t_us, name, member, -value)
    if new.counters or old.counters:
        counters = delta.counters
        for name, value in new.counters.items():
            counters[name] = counters.get(name, 0) + value
        for name, value in old.counters.items():
            counters[name] = counters.get(name, 0) - value
    if old.zmembers == new.zmembers:
        return
    for zset, member, _score in old.zmembers - new.zmembers:
        delta.zrem.add((zset, member))
        delta.zadd.pop((zset, member), None)
    for zset, member, score in new.zmembers - old.zmembers:
        delta.zadd[(zset, member)] = score
        delta.zrem.discard((zset, member))
