"""Churn-risk expiry: the moment a customer falls under the threshold, against a brute force (pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.kpis import churn_risk
from stream.kpis.churn_risk import WINDOW_US, Item

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
