"""Comparing the exporter's series with bench/reference_catalog.py's, at the tolerances the docs claim."""

from __future__ import annotations

from collections.abc import Mapping

from bench.reference_catalog import OLDEST_AWAITING, QUANTILE_METRICS, Series
from stream.kpis import METRICS

__all__ = ["KPI_NAMES", "assert_series_match", "kpi_series"]

KPI_NAMES = frozenset(m.name for m in METRICS)
QUANTILE_ERROR = 0.01  # "at most 1 % relative error per value" (docs/kpi-definitions.md)


def kpi_series(page: Mapping[tuple[str, tuple[tuple[str, str], ...]], float]) -> Series:
    """The KPI series of a scraped /metrics page (not the exporter's own two)."""
    return {k: v for k, v in page.items() if k[0] in KPI_NAMES}


def assert_series_match(got: Series, want: Series, read_within_s: float) -> None:
    """The same series, none missing and none extra; every value as the reference says.

    Exact (up to float rounding) but for the sketch quantiles (within 1 %) and the age of the
    oldest awaiting ticket, which grows with the reading clock: read `read_within_s` after the
    reference's `now`, it lies in [reference, reference + read_within_s].
    """
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f"missing {missing}, extra {extra}"
    wrong = {}
    for series, value in want.items():
        v = got[series]
        if series[0] in QUANTILE_METRICS:
            ok = abs(v - value) <= QUANTILE_ERROR * abs(value) * (1 + 1e-9)
        elif series[0] == OLDEST_AWAITING:
            ok = value - 1e-6 <= v <= value + read_within_s + 1e-6
        else:
            ok = abs(v - value) <= 1e-9 * max(1.0, abs(value))
        if not ok:
            wrong[series] = (v, value)
    assert not wrong, f"(got, reference): {wrong}"
