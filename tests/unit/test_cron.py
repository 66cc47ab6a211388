"""Schedules: ``Every`` and ``Cron`` say when a schedule fires next, in UTC.

Daylight-saving rule (Vixie cron's, per instant): on a fall-back night, a job whose
hour field is a wildcard fires at both instants of the repeated hour and a job pinned
to an hour fires once; on a spring-forward night, a pinned job moves forward by the
gap and a wildcard job skips the times that do not exist.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from reconcile.errors import ConfigError
from reconcile.scheduler.cron import Cron, Every, parse_schedule

PARIS = ZoneInfo("Europe/Paris")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def fires(schedule: Cron | Every, start: datetime, end: datetime) -> list[datetime]:
    """Every fire time in (start, end), by repeated next_after."""
    out: list[datetime] = []
    t = schedule.next_after(start)
    while t < end:
        out.append(t)
        t = schedule.next_after(t)
    return out


def local(times: list[datetime]) -> list[str]:
    return [t.astimezone(PARIS).strftime("%d %H:%M%z") for t in times]


# -- fall back: Europe/Paris 2026-10-25, 03:00 CEST -> 02:00 CET (01:00 UTC) ----------


def test_a_daily_job_at_a_repeated_time_fires_once_at_the_first() -> None:
    night = fires(Cron("30 2 * * *", "Europe/Paris"), utc(2026, 10, 24, 12), utc(2026, 10, 25, 12))

    assert night == [utc(2026, 10, 25, 0, 30)]
    assert local(night) == ["25 02:30+0200"]


def test_an_hourly_job_fires_at_both_instants_of_the_repeated_hour() -> None:
    night = fires(Cron("0 * * * *", "Europe/Paris"), utc(2026, 10, 24, 22, 30),
                  utc(2026, 10, 25, 3, 30))

    assert local(night) == ["25 01:00+0200", "25 02:00+0200", "25 02:00+0100",
                            "25 03:00+0100", "25 04:00+0100"]
    assert night == [utc(2026, 10, 24, 23) + timedelta(hours=h) for h in range(5)]


def test_every_other_hour_counts_as_a_wildcard_hour() -> None:
    night = fires(Cron("0 */2 * * *", "Europe/Paris"), utc(2026, 10, 24, 21, 30),
                  utc(2026, 10, 25, 5))

    assert local(night) == ["25 00:00+0200", "25 02:00+0200", "25 02:00+0100", "25 04:00+0100"]


# -- spring forward: Europe/Paris 2026-03-29, 02:00 CET (01:00 UTC) -> 03:00 CEST -----


def test_a_daily_job_at_a_missing_time_moves_forward_by_the_gap() -> None:
    days = fires(Cron("30 2 * * *", "Europe/Paris"), utc(2026, 3, 27, 12), utc(2026, 3, 30, 12))

    assert local(days) == ["28 02:30+0100", "29 03:30+0200", "30 02:30+0200"]


def test_an_hourly_job_skips_the_missing_hour_and_nothing_else() -> None:
    night = fires(Cron("0 * * * *", "Europe/Paris"), utc(2026, 3, 28, 23, 30),
                  utc(2026, 3, 29, 3, 30))

    assert local(night) == ["29 01:00+0100", "29 03:00+0200", "29 04:00+0200", "29 05:00+0200"]
    assert night == [utc(2026, 3, 29, 0) + timedelta(hours=h) for h in range(4)]


def test_a_pinned_job_spanning_the_gap_fires_once_per_wall_time_that_exists() -> None:
    night = fires(Cron("30 2,3 * * *", "Europe/Paris"), utc(2026, 3, 28, 12), utc(2026, 3, 29, 12))

    # 02:30 does not exist and moves to 03:30, where the real 03:30 already fires: once.
    assert local(night) == ["29 03:30+0200"]


# -- a whole year -------------------------------------------------------------------


def test_over_a_year_an_hourly_job_fires_every_hour_without_duplicates_or_gaps() -> None:
    year = fires(Cron("0 * * * *", "Europe/Paris"), utc(2025, 12, 31, 23, 30),
                 utc(2026, 12, 31, 23, 30))

    assert year == [utc(2026, 1, 1, 0) + timedelta(hours=h) for h in range(365 * 24)]


def test_over_a_year_a_daily_job_fires_once_per_local_day() -> None:
    year = fires(Cron("30 2 * * *", "Europe/Paris"), utc(2025, 12, 31, 12), utc(2026, 12, 31, 12))

    dates = [t.astimezone(PARIS).date() for t in year]
    assert len(dates) == len(set(dates)) == 365
    assert year == sorted(year)


WILDCARD_HOUR_JOBS: dict[str, Callable[[datetime], bool]] = {
    # expression: the same rule as a predicate on local wall time (an independent oracle)
    "*/15 * * * *": lambda w: w.minute % 15 == 0,
    "0 */2 * * *": lambda w: w.minute == 0 and w.hour % 2 == 0,
    "5,35 * * * 0-4": lambda w: w.minute in (5, 35) and (w.weekday() + 1) % 7 <= 4,
}
TRANSITIONS = [  # (zone, a day with a DST change in 2026); Lord Howe shifts by 30 minutes
    ("Europe/Paris", (3, 29)), ("Europe/Paris", (10, 25)),
    ("America/New_York", (3, 8)), ("America/New_York", (11, 1)),
    ("Australia/Lord_Howe", (4, 5)), ("Australia/Lord_Howe", (10, 4)),
]


@pytest.mark.parametrize(("zone", "day"), TRANSITIONS)
@pytest.mark.parametrize("expr", list(WILDCARD_HOUR_JOBS))
def test_a_wildcard_hour_job_fires_exactly_at_the_instants_whose_local_time_matches(
    zone: str, day: tuple[int, int], expr: str
) -> None:
    # Brute force over every minute of the three days around the transition.
    tz, matches = ZoneInfo(zone), WILDCARD_HOUR_JOBS[expr]
    start = utc(2026, *day) - timedelta(days=1)
    end = start + timedelta(days=3)
    minutes = (start + timedelta(minutes=i) for i in range(1, 3 * 24 * 60))
    expected = [m for m in minutes if matches(m.astimezone(tz))]

    assert fires(Cron(expr, zone), start, end) == expected


# -- basics -------------------------------------------------------------------------


def test_next_after_is_strictly_after_and_in_utc() -> None:
    cron = Cron("0 * * * *")

    assert cron.next_after(utc(2026, 5, 1, 12)) == utc(2026, 5, 1, 13)
    assert cron.next_after(utc(2026, 5, 1, 12)).tzinfo is UTC
    assert cron.next_after(datetime(2026, 5, 1, 14, 30, tzinfo=PARIS)) == utc(2026, 5, 1, 13)


def test_macros_are_understood() -> None:
    assert Cron("@daily").next_after(utc(2026, 5, 1, 12)) == utc(2026, 5, 2)
    assert Cron("@hourly", "Europe/Paris").next_after(utc(2026, 5, 1, 12, 1)) == utc(2026, 5, 1, 13)


def test_every_adds_its_interval() -> None:
    assert Every(60).next_after(utc(2026, 5, 1, 12)) == utc(2026, 5, 1, 12, 1)
    assert Every(0.5).next_after(utc(2026, 5, 1)) == utc(2026, 5, 1) + timedelta(seconds=0.5)
    assert Every(60).next_after(datetime(2026, 5, 1, 14, tzinfo=PARIS)).tzinfo is UTC


@pytest.mark.parametrize("schedule", [Every(60), Cron("* * * * *")])
def test_naive_datetimes_are_refused(schedule: Cron | Every) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.next_after(datetime(2026, 5, 1))


def test_specs_read_as_stored_in_the_schedules_table() -> None:
    assert Every(60).spec == str(Every(60)) == "every 60s"
    assert Every(2.5).spec == "every 2.5s"
    assert Cron("*/5 * * * *", "Europe/Paris").spec == "cron */5 * * * * Europe/Paris"
    assert str(Cron("@hourly")) == "cron @hourly UTC"


@pytest.mark.parametrize("expr", ["bad", "* * * *", "* * * * * *", "61 * * * *", "* 25 * * *", ""])
def test_a_bad_expression_is_a_config_error_naming_it(expr: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"invalid cron expression {expr!r}")):
        Cron(expr)


def test_an_unknown_time_zone_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="'Mars/Olympus'"):
        Cron("0 * * * *", "Mars/Olympus")


@pytest.mark.parametrize("seconds", [0, -5, True, "60"])
def test_every_needs_a_positive_number(seconds: object) -> None:
    with pytest.raises(ConfigError, match="every"):
        Every(seconds)  # type: ignore[arg-type]


def test_parse_schedule_takes_exactly_one_of_every_and_cron() -> None:
    assert isinstance(parse_schedule(every=60), Every)
    cron = parse_schedule(cron="*/5 * * * *", tz="Europe/Paris")
    assert isinstance(cron, Cron) and cron.tz == "Europe/Paris"
    assert parse_schedule(cron="@daily").spec == "cron @daily UTC"
    with pytest.raises(ConfigError, match="exactly one"):
        parse_schedule()
    with pytest.raises(ConfigError, match="exactly one"):
        parse_schedule(every=60, cron="* * * * *")
    with pytest.raises(ConfigError, match="tz"):
        parse_schedule(every=60, tz="Europe/Paris")
