"""The effect of store.apply on plain dicts, to check folds without a server."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from stream.events.fold import FoldContext, FoldMemo, entity_keys, fold
from stream.events.windows import to_us


class MemoryStore:
    """Entity states, window buckets, distinct counts, current counters and sets, in dicts."""

    def __init__(self, ctx: FoldContext, memo: FoldMemo | None = None) -> None:
        self.ctx = ctx
        self.memo = memo
        self.states: dict[str, str] = {}
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
        if self.memo is not None:
            self.memo.remember(delta)
        for bkey, fields in delta.buckets.items():
            for f, v in fields.items():
                self.buckets[bkey][f] += v
        for dkey, members in delta.distinct.items():
            for m, v in members.items():
                self.distinct[dkey][m] += v
        for name, v in delta.counters.items():
            self.counters[name] += v
        for (z, member), score in delta.zadd.items():
            self.zsets[z][member] = score
        for z, member in delta.zrem:
            self.zsets[z].pop(member, None)

    def window_counters(self, label: str) -> dict[str, int]:
        """Non-zero summed counters of one window."""
        out: dict[str, int] = defaultdict(int)
        for (lab, _), fields in self.buckets.items():
            if lab == label:
                for f, v in fields.items():
                    out[f] += v
        return {f: v for f, v in out.items() if v}
