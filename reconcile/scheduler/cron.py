"""When schedules fire: ``Every(seconds)`` and ``Cron(expr, tz)``.

Both answer one question, :meth:`next_after`: the first fire time strictly after an
aware datetime, as an aware UTC datetime. This is the only module that imports
croniter; croniter only enumerates wall-clock times (naive), and this module decides
which instants they mean, so daylight-saving transitions follow one stated rule:

* **Fall back** (a wall time occurs twice): a job whose hour field is a wildcard
  (``*`` or ``*/n``) fires at both instants; a job pinned to hours (``30 2 * * *``)
  fires once, at the first. Hourly jobs keep their rhythm, daily jobs do not run twice.
* **Spring forward** (a wall time does not exist): a job pinned to hours moves
  forward by the length of the gap (02:30 in a 02:00->03:00 gap fires at 03:30 new
  time), so a daily job still fires once that day; a job whose hour field is a
  wildcard skips the missing times, as they never happen.

This is Vixie cron's rule (wildcard versus fixed-time jobs), stated per instant.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from ..errors import ConfigError

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MARGIN = timedelta(hours=3)
"""More than any daylight-saving shift (at most 2 h anywhere): how far around a
transition wall-clock order and instant order can disagree."""


_NEVER_YEARS = 28


class Every:
    """Fire every ``seconds`` (finite, > 0): ``next_after(dt)`` is ``dt + seconds``."""

    def __init__(self, seconds: float) -> None:
        if (isinstance(seconds, bool) or not isinstance(seconds, int | float)
                or not math.isfinite(seconds) or seconds <= 0):
            raise ConfigError(f"every must be a finite positive number of seconds, got {seconds!r}")
        self.seconds = seconds
        self.interval = timedelta(seconds=seconds)

    @property
    def spec(self) -> str:
        """Human readable, as stored in ``reconcile_schedules.spec``: ``every 60s``."""
        whole = float(self.seconds).is_integer()
        return f"every {int(self.seconds) if whole else self.seconds}s"

    def next_after(self, dt: datetime) -> datetime:
        """``dt + seconds``, in UTC. ``dt`` must be aware."""
        return _utc(dt) + self.interval

    def __str__(self) -> str:
        return self.spec

    def __repr__(self) -> str:
        return f"Every({self.seconds!r})"


class Cron:
    """A five-field cron expression (or ``@hourly``, ``@daily``...) in time zone ``tz``
    (an IANA name, default ``UTC``), validated here: a bad expression or zone, or an
    expression no date matches (``0 0 31 2 *``, February 31st), raises
    :class:`ConfigError` naming it."""

    def __init__(self, expr: str, tz: str = "UTC") -> None:
        if not isinstance(expr, str):
            raise ConfigError(f"cron expression must be a string, got {expr!r}")
        if not isinstance(tz, str):
            raise ConfigError(f"time zone must be an IANA name string, got {tz!r}")
        fields = _MACROS.get(expr.strip().lower(), expr).split()
        if len(fields) != 5 or not croniter.is_valid(" ".join(fields)):
            raise ConfigError(
                f"invalid cron expression {expr!r}: expected 5 fields "
                "(minute hour day-of-month month day-of-week) or a macro such as @hourly"
            )
        try:
            self.zone: tzinfo = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"unknown time zone {tz!r} for cron expression {expr!r}") from None
        self.expr = expr
        self.tz = tz
        self._fields = " ".join(fields)
        try:
            # Any expression that matches a date matches one within 28 years (the
            # calendar's weekday cycle); without this next_after would never return.
            croniter(self._fields, datetime(2000, 1, 1),
                     max_years_between_matches=_NEVER_YEARS).get_next(datetime)
        except CroniterBadDateError:
            raise ConfigError(
                f"cron expression {expr!r} never fires: no date matches its fields "
                "(such as February 31st)"
            ) from None
        # Vixie cron's test for "runs every hour or every few hours".
        self._hour_wildcard = fields[1].startswith("*")

    @property
    def spec(self) -> str:
        """Human readable, as stored in ``reconcile_schedules.spec``:
        ``cron */5 * * * * Europe/Paris``."""
        return f"cron {self.expr} {self.tz}"

    def next_after(self, dt: datetime) -> datetime:
        """The first fire time strictly after ``dt`` (aware), in UTC."""
        after = _utc(dt)
        best = self._first_from(after, after)
        if self._steady(after) and self._steady(best):
            return best
        # Near a transition, a wall time before dt's can be a later instant (its second
        # occurrence) and a later wall time an earlier one: scan a margin each side.
        best = self._first_from(after - _MARGIN, after)
        limit = _wall(best, self.zone) + _MARGIN
        walls = croniter(self._fields, _wall(after - _MARGIN, self.zone))
        while (wall := walls.get_next(datetime)) <= limit:
            for instant in self._instants(wall):
                if after < instant < best:
                    best = instant
        return best

    def _first_from(self, start: datetime, after: datetime) -> datetime:
        # The first instant after `after` among wall times following start's.
        walls = croniter(self._fields, _wall(start, self.zone))
        while True:
            wall = walls.get_next(datetime)
            later = [i for i in self._instants(wall) if i > after]
            if later:
                return min(later)

    def _instants(self, wall: datetime) -> list[datetime]:
        first = wall.replace(tzinfo=self.zone, fold=0)
        second = wall.replace(tzinfo=self.zone, fold=1)
        if first.utcoffset() == second.utcoffset():
            return [_utc(first)]
        if _wall(_utc(first), self.zone) != wall:
            # In a gap. fold=0 reads the wall time with the offset before the
            # transition, which lands the length of the gap later, on the far side.
            return [] if self._hour_wildcard else [_utc(first)]
        if self._hour_wildcard:
            return [_utc(first), _utc(second)]
        return [_utc(first)]

    def _steady(self, instant: datetime) -> bool:
        # No offset change within the margin around `instant`.
        offsets = {(instant + step).astimezone(self.zone).utcoffset()
                   for step in (-_MARGIN, timedelta(0), _MARGIN)}
        return len(offsets) == 1

    def __str__(self) -> str:
        return self.spec

    def __repr__(self) -> str:
        return f"Cron({self.expr!r}, tz={self.tz!r})"


Schedule: TypeAlias = Every | Cron


def parse_schedule(
    every: float | None = None, cron: str | None = None, tz: str | None = None
) -> Schedule:
    """The schedule of a job class: exactly one of ``every`` (seconds) or ``cron``
    (expression, in ``tz``, default UTC). ``tz`` without ``cron`` is an error."""
    if (every is None) == (cron is None):
        raise ConfigError(
            f"give exactly one of every= or cron=, got every={every!r} cron={cron!r}"
        )
    if cron is not None:
        return Cron(cron, tz or "UTC")
    if tz is not None:
        raise ConfigError(f"tz={tz!r} only applies to cron=, not to every={every!r}")
    assert every is not None
    return Every(every)


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got {dt!r}")
    return dt.astimezone(UTC)


def _wall(instant: datetime, zone: tzinfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)
