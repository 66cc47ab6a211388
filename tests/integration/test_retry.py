"""Failures: Sidekiq's backoff, retry options, retry_in decisions, hooks, the dead set."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import orjson
import pytest

from reconcile import DISCARD, KILL, Job, death_handlers
from reconcile.broker import Broker
from reconcile.config import Settings
from reconcile.worker import default_delay
from tests.jobs_core import running_worker, wait_for


class Oops(Exception):
    pass


class SubOops(Oops):
    pass


class Failing(Job):
    """Raises ``Oops`` every time; records each run's retry_count, hooks and decisions."""

    abstract = True
    runs: ClassVar[list[int]] = []
    exhausted: ClassVar[list[tuple[str, str]]] = []
    decision: ClassVar[Any] = None

    def perform(self, n: int) -> None:
        type(self).runs.append(self.retry_count)
        raise Oops(f"failure {len(type(self).runs)}")

    def retry_in(self, count: int, exc: BaseException) -> Any:
        return type(self).decision

    @classmethod
    def retries_exhausted(cls, payload: dict[str, Any], exc: BaseException) -> None:
        cls.exhausted.append((payload["jid"], str(exc)))

    @classmethod
    def reset(cls, decision: Any = None) -> None:
        cls.runs = []
        cls.exhausted = []
        cls.decision = decision


class RetryZero(Failing):
    retry = 0


class RetryFalse(Failing):
    retry = False


class RetryTwice(Failing):
    retry = 2


class RetryDefault(Failing):
    pass


class DiscardOops(Failing):
    discard_on = (Oops,)


class HookRaises(Failing):
    retry = 5

    def retry_in(self, count: int, exc: BaseException) -> Any:
        raise ValueError("hook bug")


@pytest.fixture
def deaths() -> Iterator[list[tuple[dict[str, Any], BaseException]]]:
    seen: list[tuple[dict[str, Any], BaseException]] = []

    def handler(payload: dict[str, Any], exc: BaseException) -> None:
        seen.append((payload, exc))

    death_handlers.append(handler)
    yield seen
    death_handlers.remove(handler)


def dead_jobs(broker: Broker) -> list[dict[str, Any]]:
    return [orjson.loads(m) for m, _ in broker.set_entries("dead", 0, -1)]


def retry_jobs(broker: Broker) -> list[tuple[dict[str, Any], float]]:
    return [(orjson.loads(m), s) for m, s in broker.set_entries("retry", 0, -1)]


def _empty_sets(broker: Broker) -> bool:
    return broker.set_sizes() == {"scheduled": 0, "retry": 0, "dead": 0}


# -- the formula ------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 2, 5, 10, 24])
def test_default_delay_is_sidekiqs_formula(count: int) -> None:
    random.seed(count)
    seen = {default_delay(count) for _ in range(2000)}
    expected = {float(count**4 + 15 + k * (count + 1)) for k in range(10)}
    assert seen == expected, f"count {count}: {sorted(seen)}"


# -- retry options ----------------------------------------------------------------------


def test_retry_zero_goes_dead_at_the_first_failure(
    settings: Settings, broker: Broker, deaths: list[Any]
) -> None:
    RetryZero.reset()
    jid = RetryZero.perform_async(1)
    with running_worker(settings):
        wait_for(lambda: broker.set_sizes()["dead"] == 1, what="dead")
    assert RetryZero.runs == [0]
    [job] = dead_jobs(broker)
    assert job["jid"] == jid and job["retry_count"] == 0
    assert job["error_class"] == f"{__name__}.Oops" and job["error_message"] == "failure 1"
    assert job["failed_at"] > 0 and "retried_at" not in job
    assert RetryZero.exhausted == [(jid, "failure 1")]
    assert [(p["jid"], str(e)) for p, e in deaths] == [(jid, "failure 1")]
    assert broker.counters()["failed"] == 1 and broker.counters()["processed"] == 0


def test_retry_false_discards_the_failure(
    settings: Settings, broker: Broker, deaths: list[Any]
) -> None:
    RetryFalse.reset()
    RetryFalse.perform_async(1)
    with running_worker(settings) as worker:
        wait_for(lambda: RetryFalse.runs, what="run")
        wait_for(lambda: broker.leased_count(worker.proc_id) == 0, what="settled")
    assert _empty_sets(broker) and broker.redis.llen(broker.keys.queue("default")) == 0
    assert RetryFalse.exhausted == [] and deaths == []


def test_first_failure_is_scheduled_with_default_backoff(settings: Settings, broker: Broker) -> None:
    RetryDefault.reset()
    jid = RetryDefault.perform_async(1)
    with running_worker(settings):
        before = time.time()
        wait_for(lambda: broker.set_sizes()["retry"] == 1, what="retry")
        after = time.time()
    [(job, score)] = retry_jobs(broker)
    assert job["jid"] == jid and job["retry_count"] == 0 and job["retry"] is True
    assert job["error_class"].endswith("Oops")
    # count 0: 0**4 + 15 + rand(10) * 1 seconds
    assert before + 15 - 1 <= score <= after + 24


def test_retry_n_retries_n_times_then_dies(
    settings: Settings, broker: Broker, deaths: list[Any]
) -> None:
    """Driven with the default backoff, by moving the retry's score to now."""
    RetryTwice.reset()
    jid = RetryTwice.perform_async(1)
    with running_worker(settings):
        for attempt in range(2):
            [(job, score)] = wait_for(lambda: retry_jobs(broker), what="retry entry")
            assert job["jid"] == jid and job["retry_count"] == attempt
            assert score > time.time() + 10, "backoff of at least 15 s"
            if attempt:
                assert job["retried_at"] >= job["failed_at"]
            broker.redis.zadd(broker.keys.retry, {orjson.dumps(job): time.time()}, xx=True)
            wait_for(lambda a=attempt: len(RetryTwice.runs) == a + 2, what="retry ran")  # type: ignore[misc]
        wait_for(lambda: broker.set_sizes()["dead"] == 1, what="dead")
    assert RetryTwice.runs == [0, 1, 2], "first run, then two retries"
    [job] = dead_jobs(broker)
    assert job["retry_count"] == 2 and job["error_message"] == "failure 3"
    assert len(RetryTwice.exhausted) == 1 and len(deaths) == 1
    assert broker.set_sizes()["retry"] == 0
    assert broker.counters()["failed"] == 3


def test_retry_in_zero_retries_at_once(settings: Settings, broker: Broker) -> None:
    RetryTwice.reset(decision=0)
    RetryTwice.perform_async(1)
    with running_worker(settings):
        wait_for(lambda: broker.set_sizes()["dead"] == 1, what="dead")
    assert RetryTwice.runs == [0, 1, 2]
    assert len(RetryTwice.exhausted) == 1


def test_retry_in_seconds_sets_the_delay(settings: Settings, broker: Broker) -> None:
    RetryDefault.reset(decision=1000)
    RetryDefault.perform_async(1)
    with running_worker(settings):
        before = time.time()
        wait_for(lambda: broker.set_sizes()["retry"] == 1, what="retry")
        after = time.time()
    [(_, score)] = retry_jobs(broker)
    assert before + 1000 - 1 <= score <= after + 1000


def test_retry_in_discard_drops_the_job(
    settings: Settings, broker: Broker, deaths: list[Any]
) -> None:
    RetryDefault.reset(decision=DISCARD)
    RetryDefault.perform_async(1)
    with running_worker(settings) as worker:
        wait_for(lambda: RetryDefault.runs, what="run")
        wait_for(lambda: broker.leased_count(worker.proc_id) == 0, what="settled")
    assert _empty_sets(broker)
    assert RetryDefault.exhausted == [] and deaths == []


def test_retry_in_kill_sends_to_the_dead_set_now(
    settings: Settings, broker: Broker, deaths: list[Any]
) -> None:
    RetryDefault.reset(decision=KILL)
    jid = RetryDefault.perform_async(1)
    with running_worker(settings):
        wait_for(lambda: broker.set_sizes()["dead"] == 1, what="dead")
    assert RetryDefault.runs == [0]
    assert [j["jid"] for j in dead_jobs(broker)] == [jid]
    assert len(RetryDefault.exhausted) == 1 and len(deaths) == 1


def test_retry_in_that_raises_falls_back_to_default_backoff(
    settings: Settings, broker: Broker
) -> None:
    HookRaises.reset()
    HookRaises.perform_async(1)
    with running_worker(settings):
        before = time.time()
        wait_for(lambda: broker.set_sizes()["retry"] == 1, what="retry")
    [(_, score)] = retry_jobs(broker)
    assert before + 14 <= score <= time.time() + 24


@pytest.mark.parametrize("decision", [math.inf, math.nan], ids=["inf", "nan"])
def test_retry_in_not_finite_falls_back_to_default_backoff(
    settings: Settings, broker: Broker, decision: float
) -> None:
    """The delay is added to the Redis clock inside fetch.lua: a non-finite one would fail
    the settlement call itself, so it is refused for the default backoff."""
    RetryDefault.reset(decision=decision)
    RetryDefault.perform_async(1)
    with running_worker(settings):
        before = time.time()
        wait_for(lambda: broker.set_sizes()["retry"] == 1, what="retry")
    [(_, score)] = retry_jobs(broker)
    assert before + 14 <= score <= time.time() + 24


def test_discard_on_drops_matching_exceptions_without_hooks(
    settings: Settings, broker: Broker, deaths: list[Any]
) -> None:
    DiscardOops.reset()
    DiscardOops.perform_async(1)
    with running_worker(settings) as worker:
        wait_for(lambda: DiscardOops.runs, what="run")
        wait_for(lambda: broker.leased_count(worker.proc_id) == 0, what="settled")
    assert _empty_sets(broker)
    assert DiscardOops.exhausted == [] and deaths == []


def test_discard_on_matches_subclasses_only(settings: Settings, broker: Broker) -> None:
    class Picky(Job):
        discard_on = (SubOops,)
        retry = 0

        def perform(self, sub: bool) -> None:
            raise SubOops("sub") if sub else Oops("base")

    Picky.perform_bulk([[True], [False]])
    with running_worker(settings):
        wait_for(lambda: broker.set_sizes()["dead"] == 1, what="base Oops dead")
    [job] = dead_jobs(broker)
    assert job["args"] == [False]


def test_death_handlers_run_after_retries_exhausted_and_may_raise(
    settings: Settings, broker: Broker
) -> None:
    order: list[str] = []

    class Ordered(Job):
        retry = 0

        def perform(self) -> None:
            raise Oops("x")

        @classmethod
        def retries_exhausted(cls, payload: dict[str, Any], exc: BaseException) -> None:
            order.append("exhausted")
            raise RuntimeError("a broken hook must not stop the death")

    def first(payload: dict[str, Any], exc: BaseException) -> None:
        order.append("handler1")
        raise RuntimeError("broken handler")

    def second(payload: dict[str, Any], exc: BaseException) -> None:
        order.append("handler2")

    death_handlers.extend([first, second])
    try:
        Ordered.perform_async()
        with running_worker(settings):
            wait_for(lambda: broker.set_sizes()["dead"] == 1, what="dead")
    finally:
        death_handlers.remove(first)
        death_handlers.remove(second)
    assert order == ["exhausted", "handler1", "handler2"]


# -- the dead set ------------------------------------------------------------------------


def test_dead_set_is_trimmed_to_dead_max_jobs(settings: Settings, broker: Broker) -> None:
    RetryZero.reset()
    with running_worker(settings, dead_max_jobs=5):
        for i in range(8):  # one at a time, so each death has its own timestamp
            RetryZero.perform_async(i)
            wait_for(lambda n=i: broker.counters()["failed"] == n + 1, what="death")  # type: ignore[misc]
    dead = dead_jobs(broker)
    assert len(dead) == 5
    assert sorted(j["args"][0] for j in dead) == [3, 4, 5, 6, 7], "the newest are kept"


def test_dead_set_is_trimmed_by_age(settings: Settings, broker: Broker) -> None:
    old = orjson.dumps({"jid": "old", "class": "x", "args": [], "queue": "default"})
    broker.redis.zadd(broker.keys.dead, {old: time.time() - 1000})
    RetryZero.reset()
    jid = RetryZero.perform_async(1)
    with running_worker(settings, dead_timeout_seconds=100):
        wait_for(lambda: broker.counters()["failed"] == 1, what="death")
    assert [j["jid"] for j in dead_jobs(broker)] == [jid]


def test_retry_count_property_seen_by_perform(settings: Settings, broker: Broker) -> None:
    RetryTwice.reset(decision=0)
    RetryTwice.perform_async(1)
    with running_worker(settings):
        wait_for(lambda: len(RetryTwice.runs) == 3, what="three runs")
    assert RetryTwice.runs == [0, 1, 2]
