"""Uniqueness locks: duplicates dropped at enqueue, released when the job is through."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import orjson

from reconcile import Job
from reconcile.broker import Broker
from reconcile.config import Settings
from tests.jobs_core import running_worker, wait_for


class Sync(Job):
    unique_for = 60

    def perform(self, account: int) -> None:
        pass


class Gate(Job):
    """Blocks in perform until the test opens ``release``."""

    unique_for = 60
    started: ClassVar[threading.Event] = threading.Event()
    release: ClassVar[threading.Event] = threading.Event()

    def perform(self, account: int) -> None:
        Gate.started.set()
        Gate.release.wait(10)


class GateAtStart(Gate):
    unique_until = "start"


class Boom(Job):
    unique_for = 60
    retry = 0

    def perform(self, account: int) -> None:
        raise RuntimeError("boom")


class Discarded(Job):
    unique_for = 60
    retry = False

    def perform(self, account: int) -> None:
        raise RuntimeError("boom")


def lock_keys(broker: Broker) -> list[bytes]:
    return list(broker.redis.scan_iter(match=broker.keys.pattern[:-1] + "unique:*"))


def test_duplicate_enqueue_is_dropped_with_none(broker: Broker) -> None:
    first = Sync.perform_async(1)
    assert first is not None
    assert Sync.perform_async(1) is None
    assert Sync.perform_async(2) is not None, "other arguments are another job"
    assert Sync.set(queue="other").perform_async(1) is not None, "the queue is part of identity"
    assert broker.redis.llen(broker.keys.queue("default")) == 2
    job = orjson.loads(broker.queue_entries("default")[0])
    assert job["lock"] and job["unique_until"] == "success"
    ttl = broker.redis.pttl(broker.keys.unique(job["lock"]))
    assert 59_000 < ttl <= 60_000  # type: ignore[operator]


def test_duplicates_within_one_bulk_call(broker: Broker) -> None:
    jids = Sync.perform_bulk([[1], [1], [2], [1]])
    assert [j is not None for j in jids] == [True, False, True, False]
    assert broker.redis.llen(broker.keys.queue("default")) == 2


def test_scheduled_jobs_hold_the_lock_too(broker: Broker) -> None:
    assert Sync.perform_in(300, 1) is not None
    assert Sync.perform_async(1) is None


def test_lock_expires_after_unique_for(broker: Broker) -> None:
    assert Sync.set(unique_for=1).perform_async(1) is not None  # the shortest allowed
    wait_for(lambda: not lock_keys(broker), timeout=4, what="lock expiry")
    assert Sync.perform_async(1) is not None


def test_many_threads_enqueue_exactly_one(broker: Broker) -> None:
    threads_n = 32
    barrier = threading.Barrier(threads_n)
    results: list[str | None] = []
    lock = threading.Lock()

    def go() -> None:
        barrier.wait()
        jid = Sync.perform_async(7)
        with lock:
            results.append(jid)

    threads = [threading.Thread(target=go) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pushed = [r for r in results if r is not None]
    print(f"\n{threads_n} concurrent enqueues: {len(pushed)} pushed")
    assert len(results) == threads_n and len(pushed) == 1
    assert broker.redis.llen(broker.keys.queue("default")) == 1


def test_lock_released_on_success(settings: Settings, broker: Broker) -> None:
    Gate.started.clear()
    Gate.release.clear()
    assert Gate.perform_async(1) is not None
    with running_worker(settings, concurrency=1):
        wait_for(Gate.started.is_set, what="perform start")
        assert Gate.perform_async(1) is None, "held while running (unique_until=success)"
        Gate.release.set()
        wait_for(lambda: broker.counters()["processed"] == 1, what="ack")
        assert lock_keys(broker) == []
        assert Gate.perform_async(1) is not None


def test_unique_until_start_releases_when_perform_begins(settings: Settings, broker: Broker) -> None:
    GateAtStart.started.clear()
    GateAtStart.release.clear()
    assert GateAtStart.perform_async(1) is not None
    assert GateAtStart.perform_async(1) is None
    with running_worker(settings, concurrency=1):
        try:
            wait_for(GateAtStart.started.is_set, what="perform start")
            assert GateAtStart.perform_async(1) is not None, "released at start"
            assert GateAtStart.perform_async(1) is None, "the new enqueue holds it again"
        finally:
            GateAtStart.release.set()


def test_lock_released_when_the_job_dies_or_is_discarded(settings: Settings, broker: Broker) -> None:
    assert Boom.perform_async(1) is not None
    assert Discarded.perform_async(1) is not None
    with running_worker(settings):
        wait_for(lambda: broker.set_sizes()["dead"] == 1, what="Boom dead")
        wait_for(lambda: not lock_keys(broker), what="locks released")
    assert Boom.perform_async(1) is not None
    assert Discarded.perform_async(1) is not None


def test_lock_kept_while_a_retry_is_pending(settings: Settings, broker: Broker) -> None:
    class Flaky(Job):
        unique_for = 60
        calls = 0

        def perform(self, account: int) -> None:
            raise RuntimeError("later")

        def retry_in(self, count: int, exc: BaseException) -> Any:
            return 3600

    assert Flaky.perform_async(1) is not None
    with running_worker(settings):
        wait_for(lambda: broker.set_sizes()["retry"] == 1, what="retry scheduled")
    assert Flaky.perform_async(1) is None, "the retry still owns the lock"
