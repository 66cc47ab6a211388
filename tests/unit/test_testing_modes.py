"""``reconcile.testing``: fake and inline modes, as context managers and pytest fixtures."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from reconcile import ArgumentError, Job, PayloadTooLarge, client_middleware, server_middleware
from reconcile import client as client_module
from reconcile.config import load_settings, use_settings
from reconcile.testing import FakeMode, InlineMode, fake, inline

Payload = dict[str, Any]
log: list[Any] = []


class Greet(Job):
    queue = "mailers"

    def perform(self, name: str, opts: Any = None) -> None:
        log.append(("greet", name, opts))


class Countdown(Job):
    """Enqueues itself with n - 1 until 0, and a Greet at the end."""

    def perform(self, n: int) -> None:
        log.append(("countdown", n))
        if n > 0:
            Countdown.perform_async(n - 1)
        else:
            Greet.perform_async("liftoff")


class Forever(Job):
    def perform(self) -> None:
        Forever.perform_async()


class Broken(Job):
    def perform(self, n: int) -> None:
        log.append(("broken", n))
        raise ValueError(f"broken {n}")


class Who(Job):
    seen: ClassVar[list[tuple[str, Payload]]] = []

    def perform(self) -> None:
        Who.seen.append((self.jid, self.payload))


@pytest.fixture(autouse=True)
def no_redis() -> Iterator[None]:
    """Settings pointing at a port where nothing listens: test modes must not need Redis."""
    log.clear()
    use_settings(load_settings({"redis_url": "redis://127.0.0.1:1/0", "namespace": "nowhere"},
                               env={}, pyproject=False))
    yield
    assert client_module._interceptor is None or isinstance(
        client_module._interceptor, FakeMode | InlineMode)


# -- fake mode -----------------------------------------------------------------------------


def test_fake_collects_jobs_per_class(reconcile_fake: FakeMode) -> None:
    jid = Greet.perform_async("ann", {"lang": "en"})
    Countdown.perform_async(3)
    Greet.perform_in(3600, "bob")
    Greet.set(queue="urgent").perform_async("cy")

    jobs = reconcile_fake.jobs_for(Greet)
    assert [j["args"] for j in jobs] == [["ann", {"lang": "en"}], ["bob"], ["cy"]]
    assert jobs[0]["jid"] == jid and jobs[0]["class"] == Greet.job_name
    assert jobs[0]["queue"] == "mailers" and jobs[2]["queue"] == "urgent"
    assert "at" in jobs[1] and "enqueued_at" not in jobs[1]
    assert reconcile_fake.args_for(Countdown) == [[3]]
    assert reconcile_fake.args_for(Greet.job_name) == [["ann", {"lang": "en"}], ["bob"], ["cy"]]
    assert len(reconcile_fake) == 4 and len(reconcile_fake.jobs) == 4
    assert [j["args"] for j in reconcile_fake.jobs_in("mailers")] == [["ann", {"lang": "en"}], ["bob"]]
    assert log == [], "nothing ran"


def test_fake_args_make_the_json_round_trip(reconcile_fake: FakeMode) -> None:
    Greet.perform_async("ann", {"ids": [1, 2], "nested": {"k": [True, None, 1.5]}})
    reconcile_fake.drain(Greet)
    assert log == [("greet", "ann", {"ids": [1, 2], "nested": {"k": [True, None, 1.5]}})]


def test_fake_enforces_strict_args_and_size(reconcile_fake: FakeMode) -> None:
    with pytest.raises(ArgumentError, match=r"'opts' \(args\[1\]\).*datetime"):
        Greet.perform_async("ann", dt.datetime.now(dt.UTC))
    with pytest.raises(ArgumentError):
        Greet.perform_bulk([["a"], ["b"], ["c", {1, 2}]])
    with pytest.raises(PayloadTooLarge):
        Greet.perform_bulk([["a"], ["x" * 2_000_000]])
    assert reconcile_fake.jobs == [], "a bad bulk collects nothing"


def test_drain_runs_one_class_including_jobs_it_enqueues(reconcile_fake: FakeMode) -> None:
    Greet.perform_async("first")
    Countdown.perform_async(2)
    ran = reconcile_fake.drain(Countdown)
    assert ran == 3
    assert log == [("countdown", 2), ("countdown", 1), ("countdown", 0)]
    assert reconcile_fake.args_for(Greet) == [["first"], ["liftoff"]], "other classes stay"
    assert reconcile_fake.jobs_for(Countdown) == []


def test_drain_all_runs_everything_in_order(reconcile_fake: FakeMode) -> None:
    Greet.perform_async("first")
    Countdown.perform_async(1)
    assert reconcile_fake.drain_all() == 4
    assert log == [("greet", "first", None), ("countdown", 1), ("countdown", 0),
                   ("greet", "liftoff", None)]
    assert reconcile_fake.jobs == []
    assert reconcile_fake.drain_all() == 0


def test_perform_one(reconcile_fake: FakeMode) -> None:
    Greet.perform_bulk([["a"], ["b"]])
    assert reconcile_fake.perform_one(Greet)["args"] == ["a"]  # type: ignore[index]
    assert log == [("greet", "a", None)] and reconcile_fake.args_for(Greet) == [["b"]]
    assert reconcile_fake.perform_one(Countdown) is None


def test_a_raising_job_propagates_from_drain(reconcile_fake: FakeMode) -> None:
    Broken.perform_bulk([[1], [2]])
    with pytest.raises(ValueError, match="broken 1"):
        reconcile_fake.drain(Broken)
    assert reconcile_fake.args_for(Broken) == [[2]], "the failed job is gone, no retry"
    with pytest.raises(ValueError, match="broken 2"):
        reconcile_fake.drain_all()
    assert log == [("broken", 1), ("broken", 2)]


def test_a_job_that_enqueues_itself_forever_is_stopped(reconcile_fake: FakeMode) -> None:
    Forever.perform_async()
    with pytest.raises(RuntimeError, match="enqueues itself"):
        reconcile_fake.drain(Forever, limit=50)
    assert len(reconcile_fake.jobs_for(Forever)) == 1


def test_clear(reconcile_fake: FakeMode) -> None:
    Greet.perform_async("a")
    Countdown.perform_async(1)
    reconcile_fake.clear(Greet)
    assert reconcile_fake.args_for(Greet) == [] and reconcile_fake.args_for(Countdown) == [[1]]
    reconcile_fake.clear()
    assert reconcile_fake.jobs == []


def test_jobs_see_their_jid_and_payload(reconcile_fake: FakeMode) -> None:
    Who.seen.clear()
    jid = Who.perform_async()
    reconcile_fake.drain_all()
    [(seen_jid, payload)] = Who.seen
    assert seen_jid == jid and payload["class"] == Who.job_name and payload["args"] == []


def test_client_middleware_applies_in_fake_mode(reconcile_fake: FakeMode) -> None:
    def reject_bob(job_class: type[Job], payload: Payload, call_next: Callable[..., Any]) -> Any:
        if payload["args"][0] == "bob":
            return None
        payload["tenant"] = "acme"
        return call_next(payload)

    client_middleware.add(reject_bob)
    try:
        assert Greet.perform_async("bob") is None
        assert Greet.perform_async("ann") is not None
    finally:
        client_middleware.remove(reject_bob)
    [job] = reconcile_fake.jobs
    assert job["args"] == ["ann"] and job["tenant"] == "acme"


def test_server_middleware_runs_only_when_asked() -> None:
    trace: list[str] = []

    def mw(job: Job, payload: Payload, call_next: Callable[[], None]) -> None:
        trace.append("mw")
        call_next()

    server_middleware.add(mw)
    try:
        with fake() as plain:
            Greet.perform_async("a")
            plain.drain_all()
        assert trace == []
        with fake(server_middleware=True) as wrapped:
            Greet.perform_async("a")
            wrapped.drain_all()
        assert trace == ["mw"]
    finally:
        server_middleware.remove(mw)


def test_uniqueness_is_not_enforced_in_fake_mode(reconcile_fake: FakeMode) -> None:
    class Once(Job):
        unique_for = 60

        def perform(self) -> None:
            pass

    assert Once.perform_async() is not None and Once.perform_async() is not None
    assert len(reconcile_fake.jobs_for(Once)) == 2


def test_modes_nest_and_restore() -> None:
    assert client_module._interceptor is None
    with fake() as outer:
        with inline():
            Greet.perform_async("inline")
        Greet.perform_async("faked")
        assert outer.args_for(Greet) == [["faked"]]
    assert client_module._interceptor is None
    assert log == [("greet", "inline", None)]


def test_fixture_installs_its_mode(reconcile_fake: FakeMode) -> None:
    assert client_module._interceptor is reconcile_fake


def test_no_mode_outside_fixtures() -> None:
    assert client_module._interceptor is None


# -- inline mode ---------------------------------------------------------------------------


def test_inline_runs_perform_at_enqueue(reconcile_inline: InlineMode) -> None:
    jid = Greet.perform_async("ann", {"k": [1, 2]})
    assert log == [("greet", "ann", {"k": [1, 2]})]
    assert jid is not None and reconcile_inline.performed[0]["jid"] == jid


def test_inline_runs_scheduled_and_nested_jobs_at_once(reconcile_inline: InlineMode) -> None:
    Countdown.perform_in(3600, 1)
    assert log == [("countdown", 1), ("countdown", 0), ("greet", "liftoff", None)]


def test_inline_rejects_non_json_args_before_running(reconcile_inline: InlineMode) -> None:
    with pytest.raises(ArgumentError, match="object"):
        Greet.perform_async("ann", object())
    with pytest.raises(ArgumentError, match="tuple"):
        Greet.perform_async("ann", (1, 2))
    with pytest.raises(ArgumentError):
        Greet.perform_bulk([["ok"], [b"bytes"]])
    assert log == [], "the valid job of the bad bulk did not run either"


def test_inline_exceptions_reach_the_caller(reconcile_inline: InlineMode) -> None:
    with pytest.raises(ValueError, match="broken 7"):
        Broken.perform_async(7)


def test_inline_context_manager() -> None:
    with inline() as mode:
        Greet.perform_bulk([["a"], ["b"]])
    assert [p["args"] for p in mode.performed] == [["a"], ["b"]]
    assert client_module._interceptor is None
