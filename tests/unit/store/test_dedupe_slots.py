"""The dedupe slots (pure): which sets the batch read and the atomic write check, and when their keys expire."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream.store.writer import dedupe_slots

HORIZONS = st.sampled_from([3600.0, 86400.0, 8 * 3600.0, 600.0, 7 * 86400.0])
NOW = st.floats(min_value=1.5e9, max_value=4e9, allow_nan=False)


@given(HORIZONS, NOW, st.floats(min_value=0.0, max_value=1.0))
def test_an_id_is_checked_for_a_whole_horizon_after_it_was_recorded(horizon: float, t0: float, frac: float) -> None:
    """Recorded at t0 into the current slot; any batch within the horizon checks that slot, and its key still exists."""
    slot, _, expire_at = dedupe_slots(t0, horizon)
    t = t0 + frac * horizon
    current, live, _ = dedupe_slots(t, horizon)
    assert slot in live
    assert t < expire_at  # EXPIREAT: the key is gone only once no batch checks it
    assert live[-1] == current and live == list(range(live[0], current + 1))


@given(HORIZONS, NOW)
def test_a_slot_stops_being_checked_within_an_eighth_of_a_horizon_after_its_key_expires(
    horizon: float, t0: float
) -> None:
    """Memory stays bounded: at most 9 slots are live, and a slot's key outlives its last check by < 1 s."""
    slot, live, expire_at = dedupe_slots(t0, horizon)
    assert len(live) <= 9
    _, later, _ = dedupe_slots(expire_at + 1.0, horizon)
    assert slot not in later


def test_nine_slots_are_live_the_current_one_last() -> None:
    current, live, _ = dedupe_slots(1_700_000_000.0, 86400.0)
    assert live == list(range(current - 8, current + 1))
