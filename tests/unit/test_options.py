"""Job options are validated when the class is defined, and ``set(...)`` options when
``set`` is called: ConfigError (class) or ArgumentError (set) naming the class, the
option, the value and what is allowed. Plain Jobs and ReconciledJobs alike."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.sql import Select

from reconcile import Job, ReconciledJob, registry
from reconcile.errors import ArgumentError, ConfigError
from reconcile.payload import valid_queue

BAD_CLASS_OPTIONS: list[tuple[str, Any, str]] = [
    ("retry", -1, "True, False or an int >= 0"),
    ("retry", 2.5, "True, False or an int >= 0"),
    ("retry", "3", "True, False or an int >= 0"),
    ("unique_for", 0.0001, ">= 1"),
    ("unique_for", 0.5, ">= 1"),
    ("unique_for", -5, ">= 1"),
    ("unique_for", math.inf, ">= 1"),
    ("unique_for", math.nan, ">= 1"),
    ("unique_for", timedelta(milliseconds=10), ">= 1"),
    ("unique_until", "finish", "'success' or 'start'"),
    ("queue", "", "A-Z a-z 0-9 _ . : -"),
    ("queue", "has space", "A-Z a-z 0-9 _ . : -"),
    ("queue", "{tag}", "A-Z a-z 0-9 _ . : -"),
    ("queue", "a|b", "A-Z a-z 0-9 _ . : -"),
    ("queue", "x" * 129, "1 to 128 characters"),
    ("queue", 7, "A-Z a-z 0-9 _ . : -"),
    ("timeout", 0, "finite number of seconds > 0"),
    ("timeout", -1, "finite number of seconds > 0"),
    ("timeout", math.inf, "finite number of seconds > 0"),
    ("timeout", math.nan, "finite number of seconds > 0"),
    ("discard_on", ValueError, "a tuple of exception classes"),
    ("discard_on", (ValueError, "KeyError"), "a tuple of exception classes"),
    ("discard_on", [ValueError], "a tuple of exception classes"),
    ("cron_args", [1, 2], "a tuple of JSON-native values"),
    ("cron", 5, "a cron expression string"),
    ("tz", "Mars/Olympus_Mons", "IANA time zone name"),
]


@pytest.mark.parametrize(("option", "value", "allowed"), BAD_CLASS_OPTIONS,
                         ids=[f"{o}={v!r}"[:40] for o, v, _ in BAD_CLASS_OPTIONS])
def test_a_plain_job_with_a_bad_option_fails_at_definition(option: str, value: Any, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        type("BadJob", (Job,), {option: value, "perform": lambda self: None})
    message = str(info.value)
    assert "BadJob" in message and f"option {option} = {value!r}" in message, message
    assert allowed in message, message


def test_cron_args_must_be_json_native_and_fit_perform() -> None:
    with pytest.raises(ConfigError, match=r"BadCron.cron_args: argument args\[0\] is object"):
        type("BadCron", (Job,), {"cron": "@hourly", "cron_args": (object(),),
                                 "perform": lambda self, x: None})
    with pytest.raises(ConfigError, match=r"takes 1 positional argument, got 0"):
        type("BadCron2", (Job,), {"cron": "@hourly", "perform": lambda self, x: None})


@pytest.mark.parametrize(("cron", "tz", "match"), [
    ("bogus", "UTC", "invalid cron expression 'bogus'"),
    ("0 0 31 2 *", "UTC", "never fires"),
    ("0 0 31 4,6,9,11 *", "UTC", "never fires"),
    ("0 3 * * *", "Nowhere/City", "unknown time zone|IANA time zone"),
])
def test_a_plain_cron_job_with_a_bad_schedule_fails_at_import(cron: str, tz: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        type("Periodic", (Job,), {"cron": cron, "tz": tz, "perform": lambda self: None})
    assert "Periodic" in str(info.value)


def reconciled(**options: Any) -> type[ReconciledJob]:
    body: dict[str, Any] = {
        "every": 60, **options,
        "pending": lambda self: sa.select(sa.literal(1)),
        "perform": lambda self, session, key: None,
    }
    return type("BadReconciled", (ReconciledJob,), body)


@pytest.mark.parametrize(("option", "value", "allowed"), [
    ("every", 0, "finite number of seconds > 0"),
    ("every", math.inf, "finite number of seconds > 0"),
    ("every", math.nan, "finite number of seconds > 0"),
    ("every", timedelta(0), "finite number of seconds > 0"),
    ("jitter", -1, "finite number of seconds >= 0"),
    ("jitter", math.inf, "finite number of seconds >= 0"),
    ("batch_size", 0, "an int >= 1"),
    ("batch_size", 10.0, "an int >= 1"),
    ("retry", -2, "True, False or an int >= 0"),
    ("queue", "bad queue", "A-Z a-z"),
])
def test_a_reconciled_job_with_a_bad_option_fails_at_definition(
    option: str, value: Any, allowed: str,
) -> None:
    with pytest.raises(ConfigError) as info:
        reconciled(**{option: value})
    message = str(info.value)
    assert "BadReconciled" in message and f"option {option} = {value!r}" in message, message
    assert allowed in message, message


def test_a_reconciled_cron_that_never_fires_fails_at_definition() -> None:
    with pytest.raises(ConfigError, match=r"BadReconciled.*never fires"):
        reconciled(every=None, cron="0 0 30 2 *")


def test_good_options_are_accepted() -> None:
    class Fine(Job):
        queue = "mail.high:eu-1_x"
        retry = 0
        unique_for = timedelta(seconds=1)
        unique_until = "start"
        timeout = 0.5
        discard_on = (KeyError, OSError)
        cron = "0 0 29 2 *"  # fires every leap year
        tz = "Europe/Paris"
        cron_args = (1, "a", {"k": [None, True]})

        def perform(self, a: int, b: str, c: dict[str, Any]) -> None:
            pass

    registry.unregister(Fine.job_name)  # a throwaway class: other tests' flushes must not see it
    assert Fine.unique_for == 1.0
    assert valid_queue("x", "q" * 128) == "q" * 128

    class FineReconciled(ReconciledJob):
        every = timedelta(minutes=5)
        jitter = 0
        batch_size = 1

        def pending(self) -> Select[Any]:
            return sa.select(sa.literal(1))

        def perform(self, session: Any, key: int) -> None:  # type: ignore[override]
            pass

    registry.unregister(FineReconciled.job_name)
    assert FineReconciled.every == 300.0


class Target(Job):
    def perform(self, n: int) -> None:
        pass


@pytest.mark.parametrize(("option", "value", "allowed"), [
    ("retry", -1, "True, False or an int >= 0"),
    ("retry", 1.5, "True, False or an int >= 0"),
    ("unique_for", 0.5, ">= 1"),
    ("unique_for", math.nan, ">= 1"),
    ("unique_for", -3, ">= 1"),
    ("unique_until", "end", "'success' or 'start'"),
    ("queue", "no spaces", "A-Z a-z 0-9 _ . : -"),
    ("queue", "", "A-Z a-z 0-9 _ . : -"),
])
def test_set_refuses_a_bad_option_at_the_call(option: str, value: Any, allowed: str) -> None:
    with pytest.raises(ArgumentError) as info:
        Target.set(**{option: value})
    message = str(info.value)
    assert f"{Target.job_name}.set(): option {option} = {value!r}" in message, message
    assert allowed in message, message


def test_set_unique_for_zero_turns_uniqueness_off() -> None:
    assert Target.set(unique_for=0).opts == {"unique_for": 0}
