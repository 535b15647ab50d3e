"""Churn risk (pure): the expiry against a brute force; the incremental RiskState against a recomputation."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.kpis import churn_risk
from stream.kpis.churn_risk import WINDOW_US, Item
from stream.kpis.customers import AT_RISK, RiskState
from tests.support.config import kpi_config

CODES = st.sampled_from(["T", "C", "X", "N", "S", "E"])
ITEMS = st.lists(
    st.tuples(st.integers(0, 40).map(lambda d: d * 86_400_000_000 // 4), CODES, st.text("ab", min_size=1, max_size=3)),
    max_size=40,
)


def brute_force(items: tuple[Item, ...], threshold: int) -> int | None:
    """Walk every item time in order: the first at which the items after it score under the threshold."""
    if churn_risk.points(items, items[-1][0] if items else 0) < threshold:
        return None
    for t in sorted({t for t, _, _ in items}):
        if churn_risk.points(items, t + WINDOW_US) < threshold:
            return t + WINDOW_US
    raise AssertionError("unreachable: no item left scores 0")


@settings(max_examples=400, deadline=None)
@given(ITEMS, st.integers(1, 12))
def test_expiry_is_when_the_points_fall_under_the_threshold(raw: list[Item], threshold: int) -> None:
    items = tuple(sorted(raw))
    assert churn_risk.expiry_us(items, threshold) == brute_force(items, threshold)


# --- RiskState, kept incrementally, against a recomputation -------------------------------------

DAY_US = 86_400_000_000
CONFIGS = {threshold: kpi_config(churn_risk_threshold=threshold) for threshold in (1, 2, 4, 7)}


def risk_event(kind: str, ident: int, variant: str) -> SimpleNamespace:
    """A bare event with the fields RiskState reads: a ticket, a survey answer or a churn."""
    if kind == "ticket":
        return SimpleNamespace(type="ticket.opened", ticket_id=f"t{ident}", category=variant or None)
    if kind == "survey":
        return SimpleNamespace(type="survey.submitted", event_id=f"e{ident}", kind=variant)
    return SimpleNamespace(type="customer.churned")


EVENT = st.one_of(
    st.tuples(st.just("ticket"), st.integers(0, 8), st.sampled_from(["", "question", "complaint", "cancellation"])),
    st.tuples(st.just("survey"), st.integers(0, 8), st.sampled_from(["nps", "csat", "ces"])),
    st.tuples(st.just("churn"), st.just(0), st.just("")),
)
# Days around the 30-day edge, and a µs apart: out of order, equal and near-equal times.
WHEN = st.tuples(st.sampled_from([0, 1, 15, 29, 30, 31, 45, 59, 60, 61, 90]), st.integers(0, 2)).map(
    lambda d: d[0] * DAY_US + d[1]
)


def recomputed(seen: list[tuple[SimpleNamespace, int]]) -> tuple[int | None, tuple[Item, ...]]:
    """RiskState's rule replayed the plain way: a full sort and filter after every event."""
    churned: int | None = None
    items: list[Item] = []
    for event, t in seen:
        if event.type == "customer.churned":
            churned = t if churned is None else min(churned, t)
            continue
        code, key = churn_risk.item_of(event)
        same = [(it[0], it[1]) for it in items if it[2] == key]
        if same and same[0] <= (t, code):
            continue
        items = sorted([it for it in items if it[2] != key] + [(t, code, key)])
        items = [it for it in items if it[0] > items[-1][0] - WINDOW_US]
    return churned, tuple(items)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(EVENT, WHEN, st.booleans()), max_size=60),
    st.lists(st.integers(1, 8), min_size=1, max_size=8),
    st.sampled_from(sorted(CONFIGS)),
)
def test_incremental_risk_state_matches_a_recomputation(
    stream: list[tuple[tuple[str, int, str], int, bool]], batch_sizes: list[int], threshold: int
) -> None:
    """Random events, repeated (duplicates) and out of order, in batches as the fold takes them.

    Each batch starts from a copy of the state before it (a state read from Redis) or the
    state itself (one the memo held), and may pass through encode/decode in between.
    """
    events: list[tuple[SimpleNamespace, int]] = []
    for (kind, ident, variant), t, repeat in stream:
        e = risk_event(kind, ident, variant)
        events.append((e, t))
        if repeat:
            events.append((e, t))  # an exact redelivery
    state, seen, start = RiskState(), [], 0
    for n in itertools.cycle(batch_sizes):
        if start >= len(events):
            break
        batch = events[start : start + n]
        from_redis = n % 2 == 0
        before = state.encode()
        if from_redis:
            old = RiskState.decode(before)
            new = old.copy()
        else:
            old = new = state
        for e, t in batch:
            new.absorb(e, t)
        seen += batch
        start += n
        if from_redis:
            assert old.encode() == before  # a copy written to leaves its original alone
        churned, items = recomputed(seen)
        assert new.churned_us == churned and new.items == items
        assert new.encode() == (orjson.dumps([churned, items]).decode() if churned is not None or items else "")
        assert RiskState.decode(new.encode()) == new
        assert new.peak_points() == (churn_risk.points(items, items[-1][0]) if items else 0)
        expiry = brute_force(items, threshold) if churned is None and items else None
        expected = set() if expiry is None else {(AT_RISK.name, "c", expiry / 1e6)}
        assert new.contribute("c", CONFIGS[threshold]).zmembers == expected
        state = new
