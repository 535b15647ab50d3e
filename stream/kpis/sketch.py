"""Quantiles with bounded relative error from log-spaced bucket counts (DDSketch).

Pure functions. A positive value v lands in bucket i = ceil(log_γ v) and is read
back as 2γ^i/(γ+1), within ALPHA (1%) of v; counts per bucket add and subtract
exactly, so a sketch can be split into time buckets, summed over a window, and
a retracted sample removed. Zero and negative values share the bucket ZERO.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["ALPHA", "ZERO", "bucket_index", "bucket_value", "quantile"]

ALPHA = 0.01
_GAMMA = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA = math.log(_GAMMA)
ZERO = -(2**31)  # sentinel index for values <= 0


def bucket_index(value: float) -> int:
    """Bucket of `value` (seconds, any positive magnitude); ZERO for value <= 0."""
    if value <= 0:
        return ZERO
    return math.ceil(math.log(value) / _LOG_GAMMA)


def bucket_value(index: int) -> float:
    """Representative value of a bucket: within ALPHA relative error of any member."""
    if index == ZERO:
        return 0.0
    return 2 * _GAMMA**index / (_GAMMA + 1)


def quantile(counts: Mapping[int, int], q: float) -> float | None:
    """q-quantile (0..1) of the samples in `counts` ({bucket index: count}); None when empty.

    Interpolates linearly between closest ranks (Hyndman–Fan type 7, numpy's
    default), so the result is within ALPHA of that estimator on the raw samples.
    """
    return quantiles(counts, (q,))[0]


def quantiles(counts: Mapping[int, int], qs: Sequence[float]) -> list[float | None]:
    """`quantile` for each of `qs`, sorting the sketch once; Nones when it is empty."""
    items = sorted((i, c) for i, c in counts.items() if c > 0)
    n = sum(c for _, c in items)
    if n == 0:
        return [None] * len(qs)
    return [_ranked(items, n, q) for q in qs]


def _ranked(items: list[tuple[int, int]], n: int, q: float) -> float:
    h = (n - 1) * q
    lo_rank = math.floor(h)
    hi_rank = min(lo_rank + 1, n - 1)
    lo = hi = None
    seen = 0
    for index, count in items:
        seen += count
        if lo is None and seen > lo_rank:
            lo = bucket_value(index)
        if seen > hi_rank:
            hi = bucket_value(index)
            break
    assert lo is not None and hi is not None
    return lo + (h - lo_rank) * (hi - lo)
