"""Window and bucket arithmetic (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from stream.events.windows import US, Window, make_windows, to_us
from stream.settings import parse_duration

WINDOWS = st.sampled_from([60, 3600, 86400, 604800, 2592000, 300, 5400])


def test_default_labels() -> None:
    assert [w.label for w in make_windows([2592000, 3600, 604800, 86400])] == ["1h", "24h", "7d", "30d"]
    assert [w.bucket_seconds for w in make_windows([3600, 86400])] == [60, 1440]


@given(WINDOWS, st.floats(min_value=1e9, max_value=4e9, allow_nan=False))
def test_window_covers_exactly_its_length_plus_at_most_one_bucket(seconds: int, now: float) -> None:
    w = Window(seconds, "x")
    b = w.bucket_seconds
    first = w.first_bucket(now)
    start = first * b  # oldest instant the window holds
    assert now - seconds - b < start <= now - seconds
    # every event in [now - W, now] lands in a bucket at or after `first`
    assert w.bucket_of(int((now - seconds) * US)) >= first


@given(WINDOWS, st.integers(min_value=10**15, max_value=4 * 10**15))
def test_bucket_expires_only_after_leaving_the_window(seconds: int, t_us: int) -> None:
    w = Window(seconds, "x")
    k = w.bucket_of(t_us)
    # At the expiry instant the bucket is no longer in the window...
    assert w.first_bucket(w.expire_at(k)) > k
    # ...and one second before it leaves, it still is, and has not expired.
    leave = (k + 1) * w.bucket_seconds + seconds - 1
    assert w.first_bucket(leave) <= k < w.expire_at(k)


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["s", "m", "h", "d"]))
def test_parse_duration(n: int, unit: str) -> None:
    assert parse_duration(f"{n}{unit}") == n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(min_value=-23 * 60, max_value=23 * 60),
)
def test_to_us_is_exact_whatever_the_offset(naive: datetime, offset_minutes: int) -> None:
    # The model: integer arithmetic on the timedelta since the epoch.
    zone = timezone(timedelta(minutes=offset_minutes))
    moment = naive.replace(tzinfo=zone)
    since = moment - datetime(1970, 1, 1, tzinfo=UTC)
    expected = (since.days * 86400 + since.seconds) * US + since.microseconds
    assert to_us(moment) == expected
    assert to_us(moment.astimezone(UTC)) == expected
