"""Rolling event-time windows: pure bucket and time arithmetic, no I/O.

A window of length W is kept as buckets of W/60 seconds aligned to the epoch, so
a window's figures lag its true edge by at most one bucket (1/60 of W). Times
are integer microseconds since the epoch (UTC) on the event path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["BUCKETS_PER_WINDOW", "US", "Window", "format_duration", "make_windows", "to_us"]

US = 1_000_000
BUCKETS_PER_WINDOW = 60
# A bucket key lives this long past the moment it leaves its window, so a
# scrape from a host whose clock runs a little behind still finds it.
_EXPIRY_GRACE_S = 120


@dataclass(frozen=True)
class Window:
    """One rolling window: its length in seconds and its Prometheus label."""

    seconds: int
    label: str

    @property
    def bucket_seconds(self) -> int:
        """Bucket width in seconds (W/60)."""
        return self.seconds // BUCKETS_PER_WINDOW

    def bucket_of(self, t_us: int) -> int:
        """Index of the bucket holding event time `t_us` (µs since epoch); floor division."""
        return t_us // (self.bucket_seconds * US)

    def first_bucket(self, now_s: float) -> int:
        """Oldest bucket still in the window at `now_s` (it may start up to one bucket early)."""
        return int((now_s - self.seconds) // self.bucket_seconds)

    def last_bucket(self, now_s: float, future_skew_s: float) -> int:
        """Newest bucket that can hold an accepted event (events may be `future_skew_s` ahead)."""
        return int((now_s + future_skew_s) // self.bucket_seconds)

    def expire_at(self, bucket: int) -> int:
        """Unix time (s) after which `bucket` can no longer be part of the window."""
        return (bucket + 1) * self.bucket_seconds + self.seconds + _EXPIRY_GRACE_S


def make_windows(seconds: list[float]) -> tuple[Window, ...]:
    """Windows for the configured lengths (whole minutes), shortest first, labelled '1h', '7d'…"""
    return tuple(Window(int(s), format_duration(s)) for s in sorted(seconds))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact, no float rounding)."""
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def format_duration(seconds: float) -> str:
    """Render seconds as a window label: '1h', '24h', '7d', '90m' (days only beyond one)."""
    s = int(seconds)
    if s != seconds:
        return f"{seconds:g}s"
    if s % 86400 == 0 and s > 86400:
        return f"{s // 86400}d"
    if s % 3600 == 0:
        return f"{s // 3600}h"
    if s % 60 == 0:
        return f"{s // 60}m"
    return f"{s}s"
