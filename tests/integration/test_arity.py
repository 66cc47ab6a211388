"""Enqueue-time checks of the arguments: their count against ``perform``'s signature
(as Celery does at ``.delay()``), keyword arguments, run times (finite, within
``max_schedule_seconds``), and strings JSON cannot carry (lone surrogates), on every
enqueue path. A refused enqueue writes nothing."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from reconcile import Job, client_middleware
from reconcile.broker import Broker
from reconcile.config import Settings, use_settings
from reconcile.errors import ArgumentError, ConfigError


class Two(Job):
    def perform(self, user_id: int, action: str, options: dict[str, Any] | None = None) -> None:
        pass


class Rest(Job):
    def perform(self, first: int, *rest: Any) -> None:
        pass


ENQUEUES: dict[str, Callable[[type[Job], tuple[Any, ...]], Any]] = {
    "perform_async": lambda c, a: c.perform_async(*a),
    "perform_in": lambda c, a: c.perform_in(10, *a),
    "perform_at": lambda c, a: c.perform_at(time.time() + 10, *a),
    "perform_bulk": lambda c, a: c.perform_bulk([(1, "ok"), a]),
    "set().perform_async": lambda c, a: c.set(queue="other").perform_async(*a),
    "set().perform_in": lambda c, a: c.set(retry=1).perform_in(5, *a),
    "set().perform_at": lambda c, a: c.set(retry=1).perform_at(time.time() + 5, *a),
    "set().perform_bulk": lambda c, a: c.set(retry=1).perform_bulk([a]),
}


@pytest.fixture(params=["fast path", "dict path (client middleware)"])
def path(request: pytest.FixtureRequest) -> Iterator[None]:
    saved = client_middleware.items
    client_middleware.clear()
    if request.param != "fast path":
        client_middleware.add(lambda job_class, payload, call: call(payload))
    yield
    client_middleware.clear()
    for mw in saved:
        client_middleware.add(mw)


@pytest.mark.parametrize("how", list(ENQUEUES))
@pytest.mark.parametrize(("args", "want"), [
    ((1,), "takes 2 to 3 positional arguments, got 1"),
    ((1, "a", None, 4), "takes 2 to 3 positional arguments, got 4"),
])
def test_a_wrong_count_is_refused_at_enqueue(
    broker: Broker, path: None, how: str, args: tuple[Any, ...], want: str,
) -> None:
    with pytest.raises(ArgumentError) as info:
        ENQUEUES[how](Two, args)
    message = str(info.value)
    assert message.startswith(f"{Two.job_name}: perform(user_id, action, options=None)"), message
    assert want in message and "keyword arguments are not supported" in message
    assert broker.queue_names() == [] and broker.set_sizes()["scheduled"] == 0


def test_defaults_and_star_args_are_respected(broker: Broker) -> None:
    assert Two.perform_async(1, "a") and Two.perform_async(1, "a", {"x": 1})
    assert Rest.perform_async(1) and Rest.perform_async(1, 2, 3, 4, 5)
    with pytest.raises(ArgumentError, match=r"perform\(first, \*rest\) takes at least 1 positional"):
        Rest.perform_async()


def test_keyword_arguments_are_refused_saying_why(broker: Broker) -> None:
    for call in (lambda: Two.perform_async(1, action="a"),
                 lambda: Two.perform_in(5, 1, action="a"),
                 lambda: Two.set(retry=1).perform_async(user_id=1)):
        with pytest.raises(ArgumentError, match=r"keyword arguments .* are not supported"):
            call()
    assert broker.queue_names() == []


def test_a_required_keyword_only_parameter_fails_at_definition() -> None:
    def perform(self: Job, a: int, *, b: int) -> None:
        pass

    with pytest.raises(ConfigError, match=r"KwOnly.perform has a required keyword-only parameter 'b'"):
        type("KwOnly", (Job,), {"perform": perform})


def test_perform_after_commit_checks_the_count_at_the_call(
    pg_settings: Settings, engine: sa.Engine, broker: Broker,
) -> None:
    with Session(engine) as session:
        with pytest.raises(ArgumentError, match="takes 2 to 3 positional arguments, got 1"):
            Two.perform_after_commit(session, 1)
        with pytest.raises(ArgumentError, match="got 0"):
            Two.set(queue="q").perform_after_commit(session)
        session.commit()
    assert broker.queue_names() == []


@pytest.mark.parametrize(("call", "match"), [
    (lambda: Two.perform_in(math.nan, 1, "a"), "not a finite time"),
    (lambda: Two.perform_in(math.inf, 1, "a"), "not a finite time"),
    (lambda: Two.perform_at(math.inf, 1, "a"), "not a finite time"),
    (lambda: Two.perform_at(math.nan, 1, "a"), "not a finite time"),
    (lambda: Two.perform_in(timedelta(days=6 * 365), 1, "a"), "beyond the max_schedule_seconds horizon"),
    (lambda: Two.perform_at(datetime(2200, 1, 1, tzinfo=UTC), 1, "a"), "beyond the max_schedule_seconds"),
    (lambda: Two.set(wait=math.nan), "not a finite time"),
    (lambda: Two.set(wait=10 * 365 * 86400), "beyond the max_schedule_seconds"),
    (lambda: Two.set(wait_until=math.inf), "not a finite time"),
    (lambda: Two.set(retry=1).perform_in(math.inf, 1, "a"), "not a finite time"),
    (lambda: Two.set(retry=1).perform_at(1e12, 1, "a"), "beyond the max_schedule_seconds"),
    (lambda: Two.perform_in("10", 1, "a"), "must be a number of seconds"),
])
def test_run_times_must_be_finite_and_within_the_horizon(
    broker: Broker, call: Callable[[], Any], match: str,
) -> None:
    with pytest.raises(ArgumentError, match=match) as info:
        call()
    assert Two.job_name in str(info.value)
    assert broker.set_sizes()["scheduled"] == 0


def test_the_horizon_is_a_setting(settings: Settings, broker: Broker) -> None:
    assert settings.max_schedule_seconds == 5 * 365 * 86400
    use_settings(settings.with_overrides(max_schedule_seconds=60.0))
    try:
        assert Two.perform_in(59, 1, "a") is not None
        with pytest.raises(ArgumentError, match="horizon of 60 s"):
            Two.perform_in(120, 1, "a")
    finally:
        use_settings(settings)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ConfigError, match="max_schedule_seconds"):
            settings.with_overrides(max_schedule_seconds=bad)


@pytest.mark.parametrize(("args", "where"), [
    ((1, "\ud800"), r"'action' \(args\[1\]\) is a string with a lone surrogate"),
    ((1, "ok", {"name": "x\udfffy"}), r"'options' \(args\[2\]\)\['name'\] is a string with a lone surrogate"),
    ((1, "ok", {"list": [1, ["\ud83d"]]}), r"\['list'\]\[1\]\[0\] is a string with a lone surrogate"),
    ((1, "ok", {"k\ud800": 1}), r"'options' \(args\[2\]\) has a key with a lone surrogate"),
])
def test_a_string_json_cannot_carry_is_an_argument_error(
    broker: Broker, path: None, args: tuple[Any, ...], where: str,
) -> None:
    for how in ("perform_async", "perform_bulk", "set().perform_async"):
        with pytest.raises(ArgumentError, match=where):
            ENQUEUES[how](Two, args)
    assert broker.queue_names() == []
    assert Two.perform_async(1, "naïve ünïcode and emoji \U0001f600") is not None, "valid text passes"


def test_a_surrogate_added_by_middleware_is_named_too(broker: Broker) -> None:
    saved = client_middleware.items
    client_middleware.clear()

    def sneaky(job_class: type[Job], payload: dict[str, Any], call: Callable[..., Any]) -> Any:
        payload["args"] = [1, "\ud800"]
        return call(payload)

    client_middleware.add(sneaky)
    try:
        with pytest.raises(ArgumentError, match=r"args\[1\] is a string with a lone surrogate"):
            Two.perform_async(1, "a")
    finally:
        client_middleware.clear()
        for mw in saved:
            client_middleware.add(mw)
