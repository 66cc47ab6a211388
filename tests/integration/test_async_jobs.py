"""``async def perform`` on plain jobs: run to the end on the process's event loop,
overlapping each other, failing and timing out like sync jobs; refused at class
creation on a ReconciledJob."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, ClassVar

import orjson
import pytest

from reconcile import Job, ReconciledJob, death_handlers
from reconcile.broker import Broker
from reconcile.config import Settings
from reconcile.errors import ConfigError
from reconcile.testing import inline
from tests.jobs_core import running_worker, wait_for


class Fetch(Job):
    """Awaits a gate the test opens; records how many ran at once."""

    name = "aio.Fetch"
    inside: ClassVar[int] = 0
    most: ClassVar[int] = 0
    done: ClassVar[list[int]] = []
    gate: ClassVar[asyncio.Event | None] = None
    lock = threading.Lock()

    async def perform(self, n: int) -> None:
        with Fetch.lock:
            Fetch.inside += 1
            Fetch.most = max(Fetch.most, Fetch.inside)
        if Fetch.gate is None:
            Fetch.gate = asyncio.Event()  # made in the loop that awaits it
        await asyncio.wait_for(Fetch.gate.wait(), 10)
        with Fetch.lock:
            Fetch.inside -= 1
            Fetch.done.append(n)


class Broken(Job):
    name = "aio.Broken"
    retry = 0

    async def perform(self, n: int) -> None:
        await asyncio.sleep(0)
        raise ValueError(f"async failure {n}")


class Stuck(Job):
    name = "aio.Stuck"
    retry = 0
    timeout = 0.5
    cancelled = threading.Event()

    async def perform(self) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            Stuck.cancelled.set()
            raise


def test_async_jobs_run_to_the_end_and_overlap(settings: Settings, broker: Broker) -> None:
    Fetch.inside, Fetch.most, Fetch.done, Fetch.gate = 0, 0, [], None
    Fetch.perform_bulk([[i] for i in range(6)])
    with running_worker(settings, concurrency=6):
        wait_for(lambda: Fetch.inside == 6, what="six jobs awaiting at once")
        gate = Fetch.gate
        assert gate is not None
        from reconcile import aio

        aio.loop().call_soon_threadsafe(gate.set)
        wait_for(lambda: len(Fetch.done) == 6, what="all done")
        wait_for(lambda: broker.counters()["processed"] == 6, what="acks")
    assert Fetch.most == 6, "their awaits overlapped on one loop"
    assert sorted(Fetch.done) == list(range(6))


def test_an_async_failure_follows_the_retry_rules(settings: Settings, broker: Broker) -> None:
    Broken.perform_async(3)
    with running_worker(settings):
        wait_for(lambda: broker.set_sizes()["dead"] == 1, what="dead")
    [(raw, _)] = broker.set_entries("dead", 0, -1)
    job = orjson.loads(raw)
    assert job["error_class"] == "ValueError" and job["error_message"] == "async failure 3"


def test_a_timed_out_async_job_is_cancelled_and_dies_once(settings: Settings, broker: Broker) -> None:
    deaths: list[str] = []

    def on_death(payload: dict[str, Any], exc: BaseException) -> None:
        deaths.append(type(exc).__name__)

    Stuck.cancelled.clear()
    Stuck.perform_async()
    death_handlers.append(on_death)
    try:
        with running_worker(settings):
            assert Stuck.cancelled.wait(5), "the coroutine was cancelled in the loop"
            wait_for(lambda: broker.set_sizes()["dead"] == 1, what="dead")
    finally:
        death_handlers.remove(on_death)
    [(raw, _)] = broker.set_entries("dead", 0, -1)
    job = orjson.loads(raw)
    assert job["error_class"] == "reconcile.errors.JobTimeout"
    # the cancelled thread's own failure (CancelledError) came after the watchdog's
    # settlement: void, so the death hooks ran once
    assert deaths == ["JobTimeout"]


def test_inline_test_mode_runs_async_performs() -> None:
    ran: list[Any] = []

    class Greeter(Job):
        name = "aio.Greeter"

        async def perform(self, who: str) -> None:
            await asyncio.sleep(0)
            ran.append(who)

    class Chain(Job):  # an async job enqueuing another: inline runs it at once
        name = "aio.Chain"

        async def perform(self, who: str) -> None:
            await asyncio.sleep(0)
            Greeter.perform_async(who.upper())
            ran.append(f"after {who}")

    with inline():
        Greeter.perform_async("ada")
        Chain.perform_async("bob")
    assert ran == ["ada", "BOB", "after bob"]


@pytest.mark.parametrize("hook", ["perform", "is_pending"])
def test_a_reconciled_job_with_an_async_method_is_refused_at_class_creation(hook: str) -> None:
    from reconcile import registry

    async def method(self: Any, *args: Any) -> Any:
        return None

    with pytest.raises(ConfigError, match=f"AsyncShip.{hook} is async"):
        type("AsyncShip", (ReconciledJob,), {"every": 60, hook: method, "name": "aio.AsyncShip"})
    assert "aio.AsyncShip" not in registry.all_classes(), "never registered"
