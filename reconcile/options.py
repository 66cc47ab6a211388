"""Job options and enqueue times: what values are allowed, and how times are read.

* :data:`OPTION_RULES`: one rule per class option (``queue``, ``retry``, ``unique_for``,
  ...), each returning None for an allowed value, else what is allowed. They are
  applied when a concrete :class:`~reconcile.job.Job` subclass is defined
  (``check_class_options``: a :class:`~reconcile.errors.ConfigError`) and to each
  option given to ``Job.set()`` (an :class:`~reconcile.errors.ArgumentError`), with the
  message :func:`option_error` builds. docs/jobs.md lists the rules.
* :func:`seconds`, :func:`epoch`, :func:`run_in` and :func:`run_at`: intervals (a
  number of seconds or a ``timedelta``) and times (an aware ``datetime`` or epoch
  seconds) as given to ``perform_in``, ``perform_at`` and ``set(wait=, wait_until=)``;
  a run time must be finite and within ``max_schedule_seconds`` (default 5 years)
  from now. An interval stays a delay all the way to Redis, which adds it to its own
  clock; a time stays absolute (see :mod:`reconcile.client`).
* :func:`no_keywords`: job arguments are positional; keyword arguments are refused.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .config import get_settings
from .errors import ArgumentError
from .payload import QUEUE_NAME_RULE, is_queue_name


def seconds(value: float | int | timedelta, job: str = "", what: str = "interval") -> float:
    """``value`` (seconds or a timedelta) as float seconds; ArgumentError naming
    ``job`` and ``what`` for anything else (bool included)."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if type(value) not in (int, float):
        raise ArgumentError(f"{job}: {what} {value!r} must be a number of seconds or a timedelta")
    return float(value)


def epoch(when: datetime | float | int, job: str = "", what: str = "perform_at") -> float:
    """``when`` (an aware datetime or epoch seconds) as epoch seconds; a naive datetime
    is ambiguous and refused (ArgumentError naming ``job`` and ``what``)."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ArgumentError(f"{job}: {what} needs an aware datetime (naive times are ambiguous)")
        return when.timestamp()
    if type(when) not in (int, float):
        raise ArgumentError(f"{job}: {what} {when!r} must be an aware datetime or epoch seconds")
    return float(when)


def run_in(job: str, delay: float, what: str) -> float:
    """``delay`` (seconds) if it is a usable delay: finite, and no longer than
    ``max_schedule_seconds``; ArgumentError naming ``job`` and ``what``. The delay is
    sent as such and counted from the Redis server's clock, not this host's."""
    if not math.isfinite(delay):
        raise ArgumentError(f"{job}: {what} gives a delay of {delay!r}, which is not a finite time")
    horizon = get_settings().max_schedule_seconds
    if delay > horizon:
        raise ArgumentError(
            f"{job}: {what} gives a run time {delay:.0f} s from now, beyond the "
            f"max_schedule_seconds horizon of {horizon:.0f} s"
        )
    return delay


def run_at(job: str, at: float, what: str) -> float:
    """``at`` (epoch seconds) if it is a usable run time: finite, and no further than
    ``max_schedule_seconds`` from now; ArgumentError naming ``job`` and ``what``."""
    if not math.isfinite(at):
        raise ArgumentError(f"{job}: {what} gives a run time of {at!r}, which is not a finite time")
    horizon = get_settings().max_schedule_seconds
    ahead = at - time.time()
    if ahead > horizon:
        raise ArgumentError(
            f"{job}: {what} gives a run time {ahead:.0f} s from now, beyond the "
            f"max_schedule_seconds horizon of {horizon:.0f} s"
        )
    return at


def no_keywords(job: str, kwargs: dict[str, Any]) -> None:
    """ArgumentError naming ``job`` and the keywords if any were given."""
    if kwargs:
        raise ArgumentError(
            f"{job}: keyword arguments ({', '.join(sorted(kwargs))}) are not supported: job "
            "arguments are a positional JSON list; pass them in perform's order"
        )


# -- option rules: each returns None for an allowed value, else what is allowed ------

def _finite(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # bool is not a number here


def as_seconds(value: Any) -> Any:
    return value.total_seconds() if isinstance(value, timedelta) else value


def _rule_retry(v: Any) -> str | None:
    return None if type(v) is bool or (type(v) is int and v >= 0) else "True, False or an int >= 0"


def _rule_unique_for(v: Any) -> str | None:
    if type(v) is bool:
        return "None, 0 (no lock) or a finite number of seconds >= 1 (or a timedelta)"
    v = as_seconds(v)
    if v is None or v == 0 or (_finite(v) and v >= 1):
        return None  # 0: no uniqueness lock (a ReconciledJob's None means "the default")
    return ("None, 0 (no lock) or a finite number of seconds >= 1 (or a timedelta); a "
            "shorter lock would expire before it could deduplicate anything")


def _rule_unique_until(v: Any) -> str | None:
    return None if type(v) is str and v in ("success", "start") else "'success' or 'start'"


def _rule_queue(v: Any) -> str | None:
    return None if is_queue_name(v) else f"a queue name: {QUEUE_NAME_RULE}"


def _rule_timeout(v: Any) -> str | None:
    return None if v is None or (_finite(v) and v > 0) else "None or a finite number of seconds > 0"


def _rule_every(v: Any) -> str | None:
    v = as_seconds(v)
    if v is None or (_finite(v) and v > 0):
        return None
    return "None or a finite number of seconds > 0 (or a timedelta)"


def _rule_jitter(v: Any) -> str | None:
    return None if _finite(v) and v >= 0 else "a finite number of seconds >= 0"


def _rule_batch_size(v: Any) -> str | None:
    return None if type(v) is int and v >= 1 else "an int >= 1"


def _rule_backtrace(v: Any) -> str | None:
    if type(v) is bool or (type(v) is int and v >= 0):
        return None
    return "True, False or an int >= 0 (frames kept)"


def _rule_partitions(v: Any) -> str | None:
    return None if type(v) is int and v >= 1 else "an int >= 1 (1: one pass over every key)"


def _rule_high_water(v: Any) -> str | None:
    return None if v is None or (type(v) is int and v >= 0) else "None or an int >= 0 (0: no limit)"


def _rule_pending_since(v: Any) -> str | None:
    if v is None or (type(v) is str and v.isidentifier()):
        return None
    return "None or the name of a timestamp column of pending(), such as 'created_at'"


def _rule_discard_on(v: Any) -> str | None:
    if type(v) is tuple and all(isinstance(e, type) and issubclass(e, BaseException) for e in v):
        return None
    return "a tuple of exception classes, such as (ValueError,)"


def _rule_cron(v: Any) -> str | None:
    return None if v is None or type(v) is str else "None or a cron expression string"


def _rule_tz(v: Any) -> str | None:
    if type(v) is str:
        try:
            ZoneInfo(v)
            return None
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return "an IANA time zone name known to this system, such as 'UTC' or 'Europe/Paris'"


def _rule_cron_args(v: Any) -> str | None:
    return None if type(v) is tuple else "a tuple of JSON-native values"


OPTION_RULES: Final[dict[str, Callable[[Any], str | None]]] = {
    "queue": _rule_queue, "retry": _rule_retry, "unique_for": _rule_unique_for,
    "unique_until": _rule_unique_until, "timeout": _rule_timeout,
    "discard_on": _rule_discard_on, "cron": _rule_cron, "tz": _rule_tz,
    "cron_args": _rule_cron_args, "every": _rule_every, "jitter": _rule_jitter,
    "batch_size": _rule_batch_size, "high_water": _rule_high_water, "backtrace": _rule_backtrace,
    "partitions": _rule_partitions,
    "pending_since": _rule_pending_since,
}
"""Allowed values of each class option (docs/jobs.md lists them)."""


def option_error(name: str, value: Any, why: str) -> str:
    """The message for option ``name`` given ``value``, which is not allowed (``why``:
    what its rule allows)."""
    return f"option {name} = {value!r} is not allowed: {name} must be {why}"
