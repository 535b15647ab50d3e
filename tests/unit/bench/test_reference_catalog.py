"""The independent reference (bench/reference_catalog.py) agrees with the hand-computed figures.

The end-to-end scenarios spell out every expected series by hand, edge case by edge case; the
reference, computed from the same events, must give exactly those series (its own quantiles are
exact, the hand-computed ones too). So the reference the stream property and the resilience tests
trust is itself checked against figures a person worked out.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

import tests.end_to_end.test_catalog_kpis as catalog
import tests.end_to_end.test_core_kpis as core
from bench.reference_catalog import Config, edge_free, expected, make_stream, safe_ages, window_label

NOW = datetime(2026, 11, 25, 15, 30, 12, tzinfo=UTC)  # a Wednesday: the business hours matter


def _only(series: dict, names: set[str]) -> dict:
    return {k: v for k, v in series.items() if k[0] in names}


def _same(got: dict, want: dict) -> None:
    assert set(got) == set(want), (sorted(set(got) - set(want)), sorted(set(want) - set(got)))
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-9), key


@pytest.mark.parametrize("now", [NOW, NOW - timedelta(days=3, hours=7)])
def test_the_reference_gives_the_core_scenarios_hand_computed_figures(now: datetime) -> None:
    core.build(now)
    want = core.expected_series()
    events = core.LEADS + core.DEALS + core.TICKETS + core.SURVEYS
    _same(_only(expected(events, now.timestamp()), {n for n, _ in want}), want)


@pytest.mark.parametrize("now", [NOW, NOW - timedelta(days=3, hours=7)])
def test_the_reference_gives_the_catalog_scenarios_hand_computed_figures(now: datetime) -> None:
    catalog.build(now)
    want = catalog.expected_series()
    config = Config(business_tz=catalog.TZ, holidays=frozenset({catalog.HOLIDAY, date(2000, 1, 1)}))
    events = [e for family in catalog.FAMILIES.values() for e in family]
    _same(_only(expected(events, now.timestamp(), config), {n for n, _ in want}), want)


def test_window_labels_and_edges() -> None:
    labels = [window_label(s) for s in (60, 5400, 3600, 86400, 172800, 2592000)]
    assert labels == ["1m", "90m", "1h", "24h", "2d", "30d"]
    assert edge_free(3000, 120) and not edge_free(3550, 120) and not edge_free(3630, 120)  # the 1h edge
    assert not edge_free(850, 120)  # just under the urgent SLA: over it a little later
    assert edge_free(-240, 120) and not edge_free(-350, 120)  # accepted / maybe rejected future
    assert edge_free(3600, 120, due=True) and not edge_free(-60, 120, due=True)
    assert all(edge_free(a, 900) for a in safe_ages(900))


def test_generated_streams_cover_every_type_and_repeat_ids() -> None:
    events, published = make_stream(3000, seed=5, now=NOW)
    assert len({e["type"] for e in events}) == 24
    assert len(published) > len(events)  # producer retries
    assert len({e["event_id"] for e in events}) == len(events)
    won = {e["deal_id"] for e in events if e["type"] == "deal.won"}
    assert won & {e["deal_id"] for e in events if e["type"] == "deal.created"}  # joins meet
    assert won - {e["deal_id"] for e in events if e["type"] == "deal.created"}  # and miss
