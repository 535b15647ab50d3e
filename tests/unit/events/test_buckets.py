"""Window buckets of a fold: every event lands in the bucket of each window that holds it, whatever its age (pure)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace as E

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.events.fold import entity_keys, fold
from stream.events.windows import US
from tests.support.config import fold_context

NOW_S = 1_795_000_000.0  # 2026-11-18, not aligned to any bucket
WINDOWS = [[3600, 86400, 604800, 2592000], [3600], [600, 5400, 7200], [86400, 3600 * 30]]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(WINDOWS),
    st.lists(st.integers(0, 31 * 86400 * US), min_size=1, max_size=60),
)
def test_each_event_counts_once_in_every_window_holding_its_bucket(windows: list[int], ages_us: list[int]) -> None:
    ctx = fold_context(NOW_S, windows)
    now_us = int(NOW_S * US)
    events = [
        (E(type="lead.created", lead_id=f"l{i}", lead_source="web"), now_us - age) for i, age in enumerate(ages_us)
    ]
    delta = fold(events, dict.fromkeys(entity_keys([e for e, _ in events], ctx)), ctx)
    want: Counter[tuple[str, int]] = Counter()
    oldest = now_us - max(windows) * US
    for _, t in events:
        if t < oldest:
            continue  # late: no window
        for w in ctx.windows:
            k = t // (w.bucket_seconds * US)
            if k >= w.first_bucket(NOW_S):
                want[(w.label, k)] += 1
    got = {key: fields["n|lead.created"] for key, fields in delta.buckets.items()}
    assert got == dict(want)
    assert delta.late == sum(1 for _, t in events if t < oldest)
    for key in got:
        label, k = key
        window = next(w for w in ctx.windows if w.label == label)
        assert delta.expire_at[key] == window.expire_at(k)
