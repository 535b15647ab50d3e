"""Dropping the events already recorded from a prepared batch (pure): what the fold and the write then get."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream.worker.batch import _without


@given(st.integers(min_value=0, max_value=60).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n)))))
def test_the_kept_events_and_digests_stay_paired_and_in_order(case: tuple[int, set[int]]) -> None:
    n, drop = case
    unique = [(f"event{j}", j) for j in range(n)]
    digests = [j.to_bytes(16, "big") for j in range(n)]
    kept, kept_digests = _without(frozenset(drop), unique, digests)
    assert [t for _, t in kept] == [j for j in range(n) if j not in drop]
    assert [int.from_bytes(d, "big") for d in kept_digests] == [t for _, t in kept]
