"""ReconciledJob: the five-step execution protocol, passes, schedulers, and a Redis flush.

Every test runs on the real PostgreSQL (own schema) and Redis (own namespace).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from reconcile.broker import Broker, Delivery, SettleKind, get_broker
from reconcile.config import Settings
from reconcile.scheduler.passes import run_pass
from reconcile.scheduler.service import Scheduler
from reconcile.store import quarantine, runs
from reconcile.worker import QueueSpec, Worker
from reconcile.worker.executor import Executor
from tests.reconciled_app import ForgetfulItem, ProcessItem, effects, items


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``cond`` until true; returns the seconds it took, fails after ``timeout``."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
def engine(app_engine: sa.Engine) -> sa.Engine:
    return app_engine


def seed(engine: sa.Engine, n: int, start: int = 1) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(start, start + n)])


def effect_counts(engine: sa.Engine) -> dict[int, int]:
    with engine.connect() as c:
        rows = c.execute(sa.select(effects.c.item_id, sa.func.count()).group_by(effects.c.item_id))
        return {int(k): int(v) for k, v in rows}


def pending_count(engine: sa.Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).where(items.c.done.is_(False))).scalar() or 0)


def lease_one(broker: Broker, proc: str = "test-proc") -> Delivery:
    got = broker.exchange(proc, ["items"], 1)
    assert len(got) == 1, "expected one queued job"
    return got[0]


def test_two_workers_on_one_key_make_one_effect(pg_settings: Settings, engine: sa.Engine,
                                                broker: Broker) -> None:
    seed(engine, 1)
    ProcessItem.perform_async(1)
    raw = broker.queue_entries("items")[0]
    broker.redis.lpush(broker.keys.queue("items"), raw)  # a duplicate delivery
    first, second = broker.exchange("p", ["items"], 2)
    executor = Executor(pg_settings, broker)
    ProcessItem.hold, ProcessItem.entered = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}
    try:
        t = threading.Thread(target=lambda: outcome.setdefault("a", executor.run(first)))
        t.start()
        assert ProcessItem.entered.wait(5)
        busy = executor.run(second)  # same key while the first holds the advisory lock
        assert busy.kind is SettleKind.RESCHEDULE, "a held key lock re-schedules the delivery"
        ProcessItem.hold.set()
        t.join(10)
    finally:
        ProcessItem.hold = ProcessItem.entered = None
    assert outcome["a"].kind is SettleKind.ACK
    again = executor.run(second)  # the re-scheduled delivery runs after the commit
    assert again.kind is SettleKind.DROP, "step 2: no longer pending, acked as already done"
    assert effect_counts(engine) == {1: 1}
    assert executor.take_counts() == {"lock_busy": 1, "already_done": 1}


def test_kill_after_commit_before_ack_has_no_second_effect(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    seed(engine, 3)
    ProcessItem.perform_bulk([[1], [2], [3]])
    executor = Executor(pg_settings, broker)
    deliveries = broker.exchange("doomed", ["items"], 3)
    for d in deliveries:
        assert executor.run(d).kind is SettleKind.ACK  # committed; the acks are never sent
    # the process "dies": its lease expires and a live process's reaper recovers the jobs
    broker.redis.delete(broker.keys.alive("doomed"))
    broker.redis.sadd(broker.keys.procs, "doomed")
    assert broker.reap().requeued == 3
    # recovered jobs are suspects: each is leased alone
    redelivered = [d for _ in range(3) for d in broker.exchange("survivor", ["items"], 3)]
    assert [executor.run(d).kind for d in redelivered] == [SettleKind.DROP] * 3
    assert effect_counts(engine) == {1: 1, 2: 1, 3: 1}


def test_not_converged_rolls_back_retries_and_quarantines(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    seed(engine, 1)
    ForgetfulItem.perform_async(1)
    op = Executor(pg_settings, broker).run(lease_one(broker))
    assert op.kind is SettleKind.DEAD, "retry = 0: NotConverged goes straight to dead"
    assert b"NotConverged" in op.payload
    assert effect_counts(engine) == {}, "the effect was rolled back"
    entries = quarantine.list_entries(engine, ForgetfulItem.job_name)
    assert [e.key for e in entries] == [(1,)]
    assert run_pass(ForgetfulItem, settings=pg_settings).quarantined == 1


def test_not_converged_is_retried_before_dying(pg_settings: Settings, engine: sa.Engine,
                                               broker: Broker) -> None:
    seed(engine, 1)
    ForgetfulItem.set(retry=2).perform_async(1)
    op = Executor(pg_settings, broker).run(lease_one(broker))
    assert op.kind is SettleKind.RETRY
    assert quarantine.list_entries(engine) == []


def test_second_pass_finds_everything_already_queued(pg_settings: Settings, engine: sa.Engine) -> None:
    seed(engine, 500)
    first = run_pass(ProcessItem, settings=pg_settings)
    second = run_pass(ProcessItem, settings=pg_settings)
    assert (first.enqueued, first.already_queued) == (500, 0)
    assert (second.enqueued, second.already_queued) == (0, 500)
    recorded = runs.recent_runs(engine, job=ProcessItem.job_name)
    assert [(r.found, r.enqueued, r.already_queued) for r in recorded] == [(500, 0, 500), (500, 500, 0)]


def test_three_schedulers_fire_each_tick_once(
    pg_settings: Settings, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ProcessItem, "every", 1)
    # an established namespace: a Redis loss (a new namespace counts as one) would
    # rightly add a pass outside the tick schedule, which this test is not about
    get_broker(pg_settings).set_epoch("established")
    schedulers = [Scheduler(pg_settings, [ProcessItem]) for _ in range(3)]
    fired: list[list[str]] = [[] for _ in schedulers]
    stop = time.monotonic() + 4.5

    def loop(i: int) -> None:
        while time.monotonic() < stop:
            fired[i] += schedulers[i].run_once()
            time.sleep(0.01)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(len(f) for f in fired)
    recorded = runs.recent_runs(engine, job=ProcessItem.job_name, limit=100)
    print(f"\nticks fired by each of 3 schedulers: {[len(f) for f in fired]} (total {total} in 4.5 s)")
    assert len(recorded) == total
    assert 4 <= total <= 6, "one pass at start, then one per second, each fired once"
    starts = sorted(r.started_at for r in recorded)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    assert min(gaps) > 0.5, f"two passes fired for one tick: gaps {gaps}"


def test_flush_in_the_middle_of_ten_thousand_keys_loses_nothing(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    n = 10_000
    seed(engine, n)
    scheduler = Scheduler(pg_settings, [ProcessItem])
    workers = [Worker(pg_settings.with_overrides(concurrency=8), [QueueSpec("items")]) for _ in range(2)]
    sched_thread = threading.Thread(target=scheduler.run, kwargs={"tick": 0.1}, daemon=True)
    sched_thread.start()
    for w in workers:
        w.start()
    try:
        wait_for(lambda: pending_count(engine) <= n // 2, 120, "half of the keys done")
        deleted = broker.flush_namespace()
        left_at_flush = pending_count(engine)
        heal = wait_for(lambda: pending_count(engine) == 0, 120, "every key done after the flush")
    finally:
        for w in workers:
            w.stop(5)
        scheduler.stop()
        sched_thread.join(10)
    counts = effect_counts(engine)
    lost = n - len(counts)
    duplicates = sum(c - 1 for c in counts.values())
    print(f"\nflush deleted {deleted} keys with {left_at_flush} of {n} pending; healed in {heal:.2f}s; "
          f"lost {lost}, duplicate effects {duplicates}, incidents {scheduler.incidents}")
    assert lost == 0
    assert duplicates == 0
    # the first start on this new namespace is no incident; the flush is
    assert any("epoch" in i for i in scheduler.incidents), "the flush was detected"


def test_a_hanging_job_is_given_up_and_cannot_commit_late(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    from tests.reconciled_app import HangingItem

    seed(engine, 1)
    HangingItem.release.clear()
    HangingItem.finished.clear()
    HangingItem.perform_async(1)
    worker = Worker(pg_settings.with_overrides(concurrency=2), [QueueSpec("hang")])
    worker.start()
    try:
        given_up = wait_for(lambda: broker.set_sizes()["retry"] == 1, 10, "the timeout to fire")
        (raw, _), = broker.set_entries("retry")
        HangingItem.release.set()  # the orphaned thread wakes and tries to finish
        assert HangingItem.finished.wait(10)
        assert b'"error_class":"reconcile.errors.JobTimeout"' in raw
        assert effect_counts(engine) == {}, "the late transaction was terminated, nothing committed"
        assert pending_count(engine) == 1
        # the retry (made due now) runs normally: the key is done exactly once
        broker.redis.zadd(broker.keys.retry, {raw: 0})
        healed = wait_for(lambda: pending_count(engine) == 0, 10, "the retry to finish the key")
    finally:
        worker.stop(2)
    assert effect_counts(engine) == {1: 1}
    print(f"\nhanging job given up {given_up:.2f}s after the worker started (timeout 1.0 s); "
          f"late commit prevented; retry done {healed:.2f}s later")
    from tests.fault import harness
    from tests.fault.results import record

    record("8", "a job that hangs inside its transaction, per-class timeout 1 s",
           harness.Figures(keys_due=1, done=1, lost=0, dup_effects=0, performs=2, deliveries=2,
                           dup_exec=1),
           f"given up {given_up:.2f} s after start; its backend terminated; retry done "
           f"{healed:.2f} s later", "given up within timeout + 0.25 s watchdog; no late commit",
           notes="the hung thread woke after the give-up and could not commit (backend gone)")
