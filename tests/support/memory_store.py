"""The effect of store.apply (writer.py + lua/apply.lua) and of the exporter's read (reader.py + lua/read.lua)
on plain dicts, to check folds without a server.

The model is only worth what it matches: tests/integration/store/test_memory_model.py runs it and
the real scripts on the same generated batches and compares every key, value and TTL kind, and the
snapshot read back. Where Redis keeps a detail the figures do not need (a hash field summed back to
0, a distinct member removed at 0), the model keeps it the same way.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from stream.events.fold import FoldContext, FoldMemo, entity_keys, fold
from stream.events.windows import to_us
from stream.kpis import DISTINCT_COUNTS, UNPRUNED_SORTED_SETS, Current, KpiConfig, Totals, ZStat, sorted_set_queries
from stream.store import Snapshot

DEFAULT_STATE_TTL_S = 90 * 86400.0


class MemoryStore:
    """Entity states, window buckets, distinct counts, current counters and sets, in dicts.

    `state_ttl_s` is CRM_KPI_STATE_TTL: sorted sets written by a batch forget members scored
    more than that before the batch's clock, as the write does. Key expiry itself (buckets,
    entity TTLs) is not modelled: `persistent` says which entity keys the write keeps without TTL.
    """

    def __init__(
        self, ctx: FoldContext, memo: FoldMemo | None = None, state_ttl_s: float = DEFAULT_STATE_TTL_S
    ) -> None:
        self.ctx = ctx
        self.memo = memo
        self.state_ttl_s = state_ttl_s
        self.states: dict[str, str] = {}
        self.persistent: set[str] = set()  # entity keys whose last write carried no TTL
        self.buckets: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.distinct: dict[tuple[str, int, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.counters: dict[str, int] = defaultdict(int)
        self.zsets: dict[str, dict[str, float]] = defaultdict(dict)

    def run(self, events: list[Any]) -> None:
        """Fold one batch and apply its delta, checking entity states as apply.lua does."""
        pairs = [(e, to_us(e.occurred_at)) for e in events]
        states = {k: self.states.get(k) for k in entity_keys(events, self.ctx)}
        delta = fold(pairs, states, self.ctx, self.memo)
        for key, (old, new) in delta.entity_writes.items():
            assert self.states.get(key) == old
            self.states[key] = new
            if key in delta.persistent:
                self.persistent.add(key)
            else:
                self.persistent.discard(key)
        if self.memo is not None:
            self.memo.remember(delta)
        for bkey, fields in delta.buckets.items():
            for f, v in fields.items():
                self.buckets[bkey][f] += v  # HINCRBY: a field summed back to 0 stays
        for dkey, members in delta.distinct.items():
            for m, v in members.items():
                self.distinct[dkey][m] += v
                if self.distinct[dkey][m] <= 0:  # apply.lua: a member at 0 is removed
                    del self.distinct[dkey][m]
        for name, v in delta.counters.items():
            if v:  # the writer sends no zero increment
                self.counters[name] += v
        for (z, member), score in delta.zadd.items():
            self.zsets[z][member] = score
        for z, member in delta.zrem:
            self.zsets[z].pop(member, None)
        oldest = self.ctx.now_s - self.state_ttl_s
        for z in {z for z, _ in delta.zadd} - UNPRUNED_SORTED_SETS:
            self.zsets[z] = {m: s for m, s in self.zsets[z].items() if s >= oldest}

    def window_counters(self, label: str) -> dict[str, int]:
        """Non-zero summed counters of one window, over every bucket written (the figures, not the keys)."""
        out: dict[str, int] = defaultdict(int)
        for (lab, _), fields in self.buckets.items():
            if lab == label:
                for f, v in fields.items():
                    out[f] += v
        return {f: v for f, v in out.items() if v}

    def snapshot(self, config: KpiConfig, future_skew_s: float = 300.0, now_s: float | None = None) -> Snapshot:
        """What `read_snapshot` returns for this state at `now_s` (default: the fold's clock)."""
        now = self.ctx.now_s if now_s is None else now_s
        windows: dict[str, Totals] = {}
        for w in self.ctx.windows:
            first, last = w.first_bucket(now), w.last_bucket(now, future_skew_s)
            sums: dict[str, int] = {}
            for (label, k), fields in self.buckets.items():
                if label == w.label and first <= k <= last:
                    for f, v in fields.items():
                        sums[f] = sums.get(f, 0) + v
            totals = Totals(sums)
            for d in DISTINCT_COUNTS:
                counts: dict[str, int] = defaultdict(int)
                for (label, k, name), members in self.distinct.items():
                    if label == w.label and name == d.name and first <= k <= last:
                        for m, v in members.items():
                            counts[m] += v
                totals[d.distinct_field] = sum(c >= 1 for c in counts.values())
                totals[d.repeated_field] = sum(c >= 2 for c in counts.values())
            windows[w.label] = totals
        counters = dict(self.counters)
        for t in windows.values():
            t.current = counters
        zstats = {}
        for name, threshold in sorted_set_queries(now, config).items():
            scores = sorted(self.zsets.get(name, {}).values())
            zstats[name] = ZStat(len(scores), sum(s <= threshold for s in scores), scores[0] if scores else None)
        return Snapshot(windows, Current(counters, zstats, now, config, windows))
