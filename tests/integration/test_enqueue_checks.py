"""Options and arguments are checked where they are written: class options when the
class is defined, ``set(...)`` options when ``set`` is called, arity and run-at times at
enqueue (no services needed but Redis for the enqueues that succeed)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from reconcile import Job
from reconcile.config import Settings
from reconcile.errors import ArgumentError, ConfigError


def define(**options: Any) -> type[Job]:
    """A plain Job class with ``options``, defined now (raises what definition raises)."""
    body: dict[str, Any] = {"perform": lambda self, a, b=1: None, "__module__": __name__, **options}
    return type("Checked", (Job,), {**body, "name": f"checks.{'-'.join(map(str, options)) or 'plain'}"})


@pytest.mark.parametrize(("option", "value"), [
    ("retry", -1), ("retry", 2.5), ("unique_for", math.nan), ("unique_for", 0.5), ("unique_for", -3),
    ("unique_until", "finish"), ("queue", ""), ("queue", "a b"), ("queue", "x" * 200),
    ("timeout", 0), ("timeout", math.inf), ("cron", "bogus"), ("cron", "0 0 31 2 *"), ("tz", "Mars/Base"),
])
def test_a_bad_class_option_fails_at_definition_naming_the_class_and_option(option: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        define(**{option: value})
    text = str(info.value)
    assert option in text and "Checked" in text, text


@pytest.mark.parametrize(("option", "value"), [
    ("retry", -1), ("unique_for", math.inf), ("unique_until", "never"), ("queue", "{bad}"),
])
def test_a_bad_set_option_fails_at_the_set_call(option: str, value: Any) -> None:
    cls = define()
    with pytest.raises(ArgumentError, match=option):
        cls.set(**{option: value})


def test_arity_is_checked_at_enqueue(settings: Settings) -> None:
    cls = define()
    with pytest.raises(ArgumentError, match=r"perform\(a, b=1\) takes 1 to 2 positional arguments, got 0"):
        cls.perform_async()
    with pytest.raises(ArgumentError, match="got 3"):
        cls.perform_async(1, 2, 3)
    with pytest.raises(ArgumentError):
        cls.perform_bulk([[1], [1, 2, 3]])
    assert cls.perform_async(1) is not None and cls.perform_async(1, 2) is not None


@pytest.mark.parametrize("when", [math.nan, math.inf, 10 * 365 * 86_400.0])
def test_run_at_times_must_be_finite_and_within_the_horizon(settings: Settings, when: float) -> None:
    cls = define()
    with pytest.raises(ArgumentError):
        cls.perform_in(when, 1)
    with pytest.raises(ArgumentError):
        cls.set(wait=when)


def test_a_lone_surrogate_is_a_clear_argument_error(settings: Settings) -> None:
    cls = define()
    with pytest.raises(ArgumentError, match="surrogate"):
        cls.perform_async({"name": "\ud800"})
