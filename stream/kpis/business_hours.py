"""Business-hours clock (docs/kpi-definitions.md): elapsed time counting only working hours. Pure.

A `Schedule` is a time zone, weekly opening intervals in local wall-clock time,
holiday dates (local) and public-holiday calendars by country and region
("DE-BY", "US-CA", "FR"), from the maintained `holidays` package, computed
for whichever years the events fall in. `business_seconds(start_us, end_us, schedule)` sums
the overlap of [start, end] with the opening intervals, day by day in the
schedule's zone, so DST changes and UTC offsets are handled by `zoneinfo`: an
interval from 09:00 to 17:00 local lasts 8 h of real time on a DST day too,
and a wall-clock time that does not exist (spring-forward gap) is read with
the offset before the change.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["DAYS", "Calendar", "Schedule", "business_seconds", "is_holiday", "parse_calendar", "parse_hours"]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_US = 1_000_000
_RANGE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")

Intervals = tuple[tuple[int, int], ...]  # (start, end) seconds of the local day, end <= 86400
Calendar = tuple[str, str | None]  # (country code, region code or None), as the `holidays` package names them


def _default_week() -> tuple[Intervals, ...]:
    nine_to_five: Intervals = ((9 * 3600, 17 * 3600),)
    return (nine_to_five,) * 5 + ((), ())


@dataclass(frozen=True)
class Schedule:
    """Weekly opening hours (Monday first) in `tz`, closed dates, and public-holiday calendars.

    Also caches what it computes (not part of its value): every ticket's first
    response asks it, so its caches are keyed by plain integers, never by the
    schedule itself (hashing one walks its whole week).
    """

    tz: str = "UTC"
    week: tuple[Intervals, ...] = field(default_factory=_default_week)
    holidays: frozenset[date] = frozenset()
    calendars: tuple[Calendar, ...] = ()
    # Local day (proleptic ordinal) -> its opening intervals in µs since the epoch.
    _days: dict[int, tuple[tuple[int, int], ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )
    # (start µs, end µs) -> business µs between them; emptied when full.
    _spans: dict[tuple[int, int], int] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)


@lru_cache(maxsize=64)
def _calendar(country: str, region: str | None) -> Any:
    import holidays

    return holidays.country_holidays(country, subdiv=region)


def parse_calendar(text: str) -> Calendar:
    """'DE-BY' -> ('DE', 'BY'), 'FR' -> ('FR', None); ValueError naming what the package knows otherwise."""
    import holidays

    country, _, region = text.strip().upper().partition("-")
    supported = holidays.list_supported_countries()
    if country not in supported:
        raise ValueError(f"unknown holiday calendar {text!r}: not a country code of the holidays package (e.g. DE, US)")
    if region and region not in supported[country]:
        known = ", ".join(supported[country][:12])
        raise ValueError(
            f"unknown region {region!r} of {country} (known: {known}{', ...' if len(supported[country]) > 12 else ''})"
        )
    return country, region or None


def is_holiday(day: date, schedule: Schedule) -> bool:
    """Whether a local date is closed: an explicit holiday or one of a calendar's."""
    return day in schedule.holidays or any(day in _calendar(c, r) for c, r in schedule.calendars)


def _day_index(name: str) -> int:
    try:
        return DAYS.index(name.strip().lower()[:3])
    except ValueError:
        raise ValueError(f"unknown day {name!r} (use mon..sun)") from None


def parse_hours(text: str) -> tuple[Intervals, ...]:
    """Parse 'mon-fri 09:00-17:00; sat 10:00-12:00,13:00-15:00' into the weekly table.

    Days not named are closed; '24:00' ends a day. Intervals of a day must not overlap.
    """
    week: list[list[tuple[int, int]]] = [[] for _ in DAYS]
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        days_text, _, ranges_text = part.partition(" ")
        if not ranges_text.strip():
            raise ValueError(f"expected 'days hh:mm-hh:mm', got {part!r}")
        lo, _, hi = days_text.partition("-")
        first = _day_index(lo)
        last = _day_index(hi) if hi else first
        days = [(first + k) % 7 for k in range((last - first) % 7 + 1)]  # 'sun-thu' wraps
        for rng in ranges_text.split(","):
            m = _RANGE.match(rng.strip())
            if not m:
                raise ValueError(f"bad time range {rng.strip()!r} (use hh:mm-hh:mm)")
            h1, m1, h2, m2 = (int(x) for x in m.groups())
            start, end = h1 * 3600 + m1 * 60, h2 * 3600 + m2 * 60
            if m1 > 59 or m2 > 59 or not 0 <= start < end <= 86400:
                raise ValueError(f"bad time range {rng.strip()!r}")
            for d in days:
                week[d].append((start, end))
    out = []
    for intervals in week:
        intervals.sort()
        for (_, e1), (s2, _) in itertools.pairwise(intervals):
            if s2 < e1:
                raise ValueError("overlapping time ranges on one day")
        out.append(tuple(intervals))
    return tuple(out)


def _local_us(day: date, second: int, zone: ZoneInfo) -> int:
    """µs since the epoch of local wall-clock `second` of `day` (86400 = next midnight)."""
    extra, second = divmod(second, 86400)
    d = day + timedelta(days=extra)
    moment = datetime.combine(d, time(second // 3600, second % 3600 // 60, second % 60), tzinfo=zone)
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * _US + delta.microseconds


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DAY_US = 86400 * _US
_SPANS_MAX = 65536


def _opening(day: int, schedule: Schedule) -> tuple[tuple[int, int], ...]:
    """A local day's (proleptic ordinal) opening intervals as (start, end) µs since the epoch."""
    found = schedule._days.get(day)
    if found is None:
        local = date.fromordinal(day)
        if is_holiday(local, schedule):
            found = ()
        else:
            zone = ZoneInfo(schedule.tz)
            found = tuple(
                (_local_us(local, lo, zone), _local_us(local, hi, zone)) for lo, hi in schedule.week[local.weekday()]
            )
        schedule._days[day] = found
    return found


def business_us(start_us: int, end_us: int, schedule: Schedule) -> int:
    """Business-hours µs between two instants (µs since the epoch); 0 when end <= start."""
    if end_us <= start_us:
        return 0
    spans = schedule._spans
    key = (start_us, end_us)
    total = spans.get(key)
    if total is not None:
        return total
    # Local days around the UTC days of both ends: UTC offsets stay within ±1 day, and a
    # local day's hours may lie partly in the UTC day before or after.
    total = 0
    for day in range(start_us // _DAY_US + _EPOCH_ORDINAL - 2, end_us // _DAY_US + _EPOCH_ORDINAL + 3):
        for lo, hi in _opening(day, schedule):
            a = start_us if start_us > lo else lo
            b = end_us if end_us < hi else hi
            if b > a:
                total += b - a
    if len(spans) >= _SPANS_MAX:
        spans.clear()
    spans[key] = total
    return total


def business_seconds(start_us: int, end_us: int, schedule: Schedule) -> float:
    """Business-hours seconds between two instants given in µs since the epoch."""
    return business_us(start_us, end_us, schedule) / _US
