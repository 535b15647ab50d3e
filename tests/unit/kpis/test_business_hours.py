"""The business-hours clock: weekends, holidays, time-zone offsets, DST (pure)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.events.windows import to_us
from stream.kpis.business_hours import Schedule, business_seconds, parse_calendar, parse_hours
from stream.settings import SettingsError, load_settings

DEFAULT = Schedule()
BERLIN = Schedule("Europe/Berlin", parse_hours("mon-fri 09:00-17:00"))
NEW_YORK = Schedule("America/New_York", parse_hours("mon-thu 08:30-12:00,13:00-17:30; fri 08:30-12:00"))


def secs(start: datetime, end: datetime, schedule: Schedule = DEFAULT) -> float:
    return business_seconds(to_us(start), to_us(end), schedule)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def reference(start: datetime, end: datetime, schedule: Schedule) -> float:
    """Minute by minute (inputs on whole minutes): an independent model."""
    zone = ZoneInfo(schedule.tz)
    total = 0
    t = start
    while t < end:
        local = t.astimezone(zone)
        second = local.hour * 3600 + local.minute * 60
        if local.date() not in schedule.holidays and any(
            lo <= second < hi for lo, hi in schedule.week[local.weekday()]
        ):
            total += 60
        t += timedelta(minutes=1)
    return float(total)


def test_default_is_monday_to_friday_nine_to_five_utc() -> None:
    monday = utc(2026, 11, 23)
    assert secs(monday, monday + timedelta(days=7)) == 5 * 8 * 3600
    assert secs(utc(2026, 11, 23, 16), utc(2026, 11, 24, 10)) == 2 * 3600  # overnight
    assert secs(utc(2026, 11, 27, 16), utc(2026, 11, 30, 10)) == 2 * 3600  # over the weekend
    assert secs(utc(2026, 11, 28, 10), utc(2026, 11, 29, 20)) == 0  # all weekend
    assert secs(utc(2026, 11, 23, 12), utc(2026, 11, 23, 11)) == 0  # end before start


def test_holidays_are_closed() -> None:
    schedule = Schedule(holidays=frozenset({date(2026, 11, 26)}))
    assert secs(utc(2026, 11, 25, 16), utc(2026, 11, 27, 10), schedule) == 2 * 3600
    assert secs(utc(2026, 11, 26, 9), utc(2026, 11, 26, 17), schedule) == 0


def test_holiday_calendars_by_country_and_region() -> None:
    # 2026-01-06 (a Tuesday) is Epiphany in Bavaria, a working day in Berlin; 2026-12-25 everywhere in Germany.
    bavaria = Schedule(tz="Europe/Berlin", calendars=(("DE", "BY"),))
    berlin = Schedule(tz="Europe/Berlin", calendars=(("DE", "BE"),))
    assert secs(utc(2026, 1, 6, 6), utc(2026, 1, 6, 18), bavaria) == 0
    assert secs(utc(2026, 1, 6, 6), utc(2026, 1, 6, 18), berlin) == 8 * 3600
    assert secs(utc(2026, 12, 25, 6), utc(2026, 12, 25, 18), berlin) == 0
    assert parse_calendar("de-by") == ("DE", "BY") and parse_calendar("FR") == ("FR", None)
    with pytest.raises(ValueError, match="unknown holiday calendar"):
        parse_calendar("Atlantis")
    with pytest.raises(ValueError, match="unknown region"):
        parse_calendar("DE-XX")
    # Dates and calendars mix in one setting; a bad entry names the setting.
    cfg = load_settings(business_holidays="DE-BY, 2026-12-31").kpi_config()
    assert cfg.schedule.calendars == (("DE", "BY"),) and cfg.schedule.holidays == frozenset({date(2026, 12, 31)})
    for bad in ("Atlantis", "2026-02-30"):
        with pytest.raises(SettingsError, match="CRM_KPI_BUSINESS_HOLIDAYS"):
            load_settings(business_holidays=bad)


def test_time_zone_offsets() -> None:
    # 09:00-17:00 Berlin is 08:00-16:00 UTC in winter (UTC+1).
    assert secs(utc(2026, 11, 23, 7), utc(2026, 11, 23, 9), BERLIN) == 3600
    assert secs(utc(2026, 11, 23, 15), utc(2026, 11, 23, 17), BERLIN) == 3600
    # Split hours in New York (UTC-5 in winter): Friday closes at noon.
    assert secs(utc(2026, 11, 27, 13, 30), utc(2026, 11, 27, 23), NEW_YORK) == 3.5 * 3600


def test_dst_changes_keep_eight_hour_days() -> None:
    # Europe/Berlin: clocks go forward on Sunday 2026-03-29 and back on 2026-10-25.
    for monday in (utc(2026, 3, 23), utc(2026, 3, 30), utc(2026, 10, 19), utc(2026, 10, 26)):
        assert secs(monday - timedelta(days=1), monday + timedelta(days=6), BERLIN) == 40 * 3600
    # Opening moves by one hour in UTC across the change.
    assert secs(utc(2026, 3, 27, 7), utc(2026, 3, 27, 8), BERLIN) == 0  # Fri 08:00 CET: closed
    assert secs(utc(2026, 3, 30, 7), utc(2026, 3, 30, 8), BERLIN) == 3600  # Mon 09:00 CEST: open
    # A schedule over the missing hour: 02:00-03:00 does not exist on 2026-03-29.
    night = Schedule("Europe/Berlin", parse_hours("sun 01:00-04:00"))
    assert secs(utc(2026, 3, 28, 12), utc(2026, 3, 29, 12), night) == 2 * 3600


minute = st.integers(min_value=0, max_value=60 * 24 * 60)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([DEFAULT, BERLIN, NEW_YORK, Schedule("Asia/Kolkata", parse_hours("sun-thu 10:00-18:30"))]),
    st.integers(min_value=0, max_value=400 * 24 * 60),
    st.integers(min_value=0, max_value=6 * 24 * 60),
    st.booleans(),
)
def test_matches_a_minute_by_minute_reference(schedule: Schedule, offset: int, length: int, holiday: bool) -> None:
    start = utc(2026, 1, 1) + timedelta(minutes=offset)
    end = start + timedelta(minutes=length)
    if holiday:
        schedule = Schedule(schedule.tz, schedule.week, frozenset({(start + timedelta(days=1)).date()}))
    assert secs(start, end, schedule) == reference(start, end, schedule)


@settings(max_examples=100, deadline=None)
@given(minute, minute, minute)
def test_additive_and_bounded(a: int, b: int, c: int) -> None:
    t0, t1, t2 = (utc(2026, 10, 20) + timedelta(minutes=x, seconds=7) for x in sorted((a, b, c)))
    for schedule in (DEFAULT, BERLIN, NEW_YORK):
        whole = secs(t0, t2, schedule)
        assert whole == secs(t0, t1, schedule) + secs(t1, t2, schedule)
        assert 0 <= whole <= (t2 - t0).total_seconds()


def test_parse_hours_and_settings() -> None:
    week = parse_hours("mon-fri 09:00-17:00; sat 10:00-12:00,13:00-24:00")
    assert week[0] == ((9 * 3600, 17 * 3600),) and week[6] == ()
    assert week[5] == ((36000, 43200), (46800, 86400))
    assert [bool(d) for d in parse_hours("sun-thu 10:00-18:00")] == [True] * 4 + [False, False, True]
    for bad in ("mon-fri", "mon-fri 9-17", "xyz 09:00-10:00", "mon 10:00-09:00"):
        with pytest.raises(ValueError):
            parse_hours(bad)
    with pytest.raises(ValueError):
        parse_hours("mon 09:00-12:00,11:00-13:00")
    s = load_settings(business_timezone="Europe/Berlin", business_holidays="2026-12-24,2026-12-25")
    cfg = s.kpi_config()
    assert cfg.schedule.tz == "Europe/Berlin" and date(2026, 12, 25) in cfg.schedule.holidays
    with pytest.raises(SettingsError, match="CRM_KPI_BUSINESS_TIMEZONE"):
        load_settings(business_timezone="Mars/Olympus")
    with pytest.raises(SettingsError, match="CRM_KPI_BUSINESS_HOURS"):
        load_settings(business_hours="mon-fri 9-5")
