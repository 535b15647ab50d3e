"""Quantile sketch: relative error against numpy's default (type 7) estimator."""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.kpis import sketch


def exact_quantile(values: list[float], q: float) -> float:
    xs = sorted(values)
    h = (len(xs) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


@given(st.floats(min_value=1e-3, max_value=1e8, allow_nan=False))
def test_bucket_value_within_alpha(v: float) -> None:
    assert sketch.ALPHA == 0.01  # the documented bound, not whatever the module says
    rep = sketch.bucket_value(sketch.bucket_index(v))
    assert abs(rep - v) <= 0.01 * v * (1 + 1e-9)


@settings(max_examples=500)
@given(
    st.lists(st.floats(min_value=0.001, max_value=3e6, allow_nan=False), min_size=1, max_size=300),
    st.sampled_from([0.5, 0.9, 0.99, 0.0, 1.0]),
)
def test_quantile_relative_error_at_most_1_percent(values: list[float], q: float) -> None:
    # The claim (docs/kpi-definitions.md, README): at most 1 % relative error per value. Each sample's
    # representative is within 1 % of it and the interpolation weights are positive, so the
    # interpolated quantile is too; the factor only absorbs float rounding at bucket edges.
    counts = Counter(sketch.bucket_index(v) for v in values)
    got = sketch.quantile(counts, q)
    want = exact_quantile(values, q)
    assert got is not None
    assert abs(got - want) <= 0.01 * want * (1 + 1e-9)


def test_zero_and_empty() -> None:
    assert sketch.quantile({}, 0.5) is None
    assert sketch.quantile({sketch.ZERO: 3}, 0.9) == 0.0
    assert sketch.bucket_index(-5) == sketch.ZERO
