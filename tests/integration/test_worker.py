"""The in-process worker: runs jobs once each, picks up fast, promotes, stops cleanly."""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from typing import Any, ClassVar

import orjson
import pytest

from reconcile import Job
from reconcile.broker import Broker
from reconcile.config import Settings
from reconcile.worker import Worker, WorkerSignals, parse_queue
from reconcile.worker.maintenance import Maintenance
from tests.jobs_core import Record, counts, running_worker, wait_for


class Stamp(Job):
    """Records when perform started, and wakes the test."""

    started: ClassVar[dict[int, float]] = {}
    event: ClassVar[threading.Event] = threading.Event()

    def perform(self, n: int) -> None:
        Stamp.started[n] = time.perf_counter()
        Stamp.event.set()


class Hold(Job):
    """Blocks until the test opens ``gate``."""

    gate: ClassVar[threading.Event] = threading.Event()
    running: ClassVar[threading.Semaphore] = threading.Semaphore(0)
    done: ClassVar[list[int]] = []

    def perform(self, n: int) -> None:
        Hold.running.release()
        Hold.gate.wait(10)
        Hold.done.append(n)


def test_runs_every_job_exactly_once(settings: Settings, broker: Broker) -> None:
    n = 500
    Record.perform_bulk([f"t{i}"] for i in range(n))
    started = time.perf_counter()
    with running_worker(settings, concurrency=10) as worker:
        wait_for(lambda: len(counts(broker)) == n, timeout=20, what=f"{n} jobs done")
        elapsed = time.perf_counter() - started
        wait_for(lambda: broker.counters()["processed"] == n, what="acks")
        assert broker.leased_count(worker.proc_id) == 0
    done = counts(broker)
    print(f"\n{n} jobs in {elapsed:.2f}s ({n / elapsed:.0f} jobs/s, concurrency 10)")
    assert sorted(done) == sorted(f"t{i}" for i in range(n))
    assert set(done.values()) == {1}, "no job ran twice"
    assert broker.redis.llen(broker.keys.queue("default")) == 0


def test_idle_worker_picks_up_a_new_job_within_100ms(settings: Settings, broker: Broker) -> None:
    Stamp.started.clear()
    latencies = []
    signals = WorkerSignals()
    # idle_wait is long, so a fast pickup can only come from the wake-up, not a poll
    with running_worker(settings, concurrency=2, idle_wait=5.0, signals=signals):
        for i in range(20):
            signals.fetcher_idle.wait()  # fired once after each job's adoption
            Stamp.event.clear()
            t0 = time.perf_counter()
            Stamp.perform_async(i)
            assert Stamp.event.wait(5), "job not picked up"
            latencies.append(Stamp.started[i] - t0)
    ms = sorted(x * 1000 for x in latencies)
    median = statistics.median(ms)
    print(f"\npickup latency over {len(ms)} jobs: median {median:.2f} ms, "
          f"min {ms[0]:.2f} ms, max {ms[-1]:.2f} ms")
    assert median < 100, f"median pickup {median:.1f} ms"
    assert ms[-1] < 1000, f"worst pickup {ms[-1]:.1f} ms: a missed wake-up?"


def test_scheduled_job_is_promoted_and_run_on_time(settings: Settings, broker: Broker) -> None:
    Stamp.started.clear()
    Stamp.event.clear()
    with running_worker(settings):
        at = time.time() + 0.5
        wall_to_perf = time.perf_counter() - time.time()
        Stamp.perform_at(at, 1)
        assert broker.set_sizes()["scheduled"] == 1
        assert Stamp.event.wait(5), "scheduled job never ran"
    lateness = Stamp.started[1] - (at + wall_to_perf)
    print(f"\nscheduled job ran {lateness * 1000:.0f} ms after its time "
          f"(poll_interval {settings.poll_interval}s)")
    assert lateness >= -0.01, "ran early"
    assert lateness < settings.poll_interval * 1.5 + 0.5
    assert broker.set_sizes()["scheduled"] == 0


def test_worker_registers_heartbeats_and_unregisters(settings: Settings, broker: Broker) -> None:
    Hold.gate.clear()
    Hold.perform_async(1)
    with running_worker(settings, concurrency=3) as worker:
        assert Hold.running.acquire(timeout=5)
        procs = wait_for(lambda: [p for p in broker.processes() if p["busy"] == "1"],
                         what="heartbeat showing a busy thread")
        [p] = procs
        assert p["id"] == worker.proc_id and p["alive"] and p["leased"] == 1
        assert p["concurrency"] == "3" and p["queues"] == "default" and p["quiet"] == "0"
        Hold.gate.set()
    assert broker.processes() == []
    assert not broker.redis.exists(broker.keys.lease(worker.proc_id))


def test_stop_pushes_buffered_jobs_back_and_waits_for_running(
    settings: Settings, broker: Broker
) -> None:
    Hold.gate.clear()
    Hold.done.clear()
    Hold.perform_bulk([n] for n in range(5))
    queue = broker.keys.queue("default")
    # capacity = concurrency 1 + prefetch 1: one job runs, one waits in the buffer
    with running_worker(settings, concurrency=1, prefetch=1) as worker:
        assert Hold.running.acquire(timeout=5)
        wait_for(lambda: broker.leased_count(worker.proc_id) == 2, what="two leased")
        assert broker.redis.llen(queue) == 3
        result: list[int] = []
        stopper = threading.Thread(target=lambda: result.append(worker.stop(5.0)))
        stopper.start()
        wait_for(lambda: broker.redis.llen(queue) == 4, what="buffered job pushed back")
        assert Hold.done == [], "the running job is still running"
        Hold.gate.set()
        stopper.join(10)
    assert result == [1], "one buffered job pushed back; the running one finished"
    assert Hold.done == [0]
    assert broker.counters()["processed"] == 1
    assert broker.redis.llen(queue) == 4
    assert broker.processes() == []


def test_stop_pushes_back_jobs_still_running_after_the_timeout(
    settings: Settings, broker: Broker
) -> None:
    Hold.gate.clear()
    Hold.done.clear()
    Hold.perform_bulk([n] for n in range(3))
    queue = broker.keys.queue("default")
    with running_worker(settings, concurrency=2, prefetch=1) as worker:
        assert Hold.running.acquire(timeout=5) and Hold.running.acquire(timeout=5)
        wait_for(lambda: broker.leased_count(worker.proc_id) == 3, what="three leased")
        t0 = time.monotonic()
        pushed = worker.stop(0.3)
        took = time.monotonic() - t0
    Hold.gate.set()
    print(f"\nstop(0.3) with 2 stuck jobs took {took:.2f}s")
    assert pushed == 3
    assert took < 2.0
    assert broker.redis.llen(queue) == 3
    assert broker.processes() == []
    # the pushed-back jobs run again on the next worker (at-least-once)
    wait_for(lambda: len(Hold.done) == 2, what="stuck threads finish")
    Hold.done.clear()
    with running_worker(settings, concurrency=3):
        wait_for(lambda: len(Hold.done) == 3, what="rerun")
    assert sorted(Hold.done) == [0, 1, 2]


class BadInit(Job):
    retry = 0

    def __init__(self) -> None:
        raise RuntimeError("constructor bug")

    def perform(self) -> None:
        pass


class Exits(Job):
    retry = 0

    def perform(self) -> None:
        raise SystemExit(3)


def test_a_job_that_cannot_be_built_or_exits_is_a_failure(settings: Settings, broker: Broker) -> None:
    BadInit.perform_async()
    Exits.perform_async()
    with running_worker(settings, concurrency=1) as worker:
        wait_for(lambda: broker.set_sizes()["dead"] == 2, what="both dead")
        Record.perform_async("after")
        wait_for(lambda: counts(broker) == {"after": 1}, what="the thread survived")
        executors = [t for t in worker.threads if t.name.startswith("reconcile-exec")]
        assert len(executors) == 1 and executors[0].is_alive(), "the executor thread survived"
    errors = sorted(orjson.loads(m)["error_class"] for m, _ in broker.set_entries("dead"))
    assert errors == ["RuntimeError", "SystemExit"]


def test_maintenance_backs_off_while_redis_is_down(settings: Settings, broker: Broker) -> None:
    """A failing promotion is retried about once a second, not in a tight loop."""
    import redis

    calls: list[float] = []

    class DownBroker:
        def promote(self, limit: int = 1000) -> Any:
            calls.append(time.monotonic())
            raise redis.ConnectionError("down")

        def reap(self, limit: int = 100) -> Any:
            raise redis.ConnectionError("down")

        def take_reaper_turn(self, me: str, turn_ms: int) -> int:
            # without it the maintenance thread died of AttributeError when its first
            # turn came before a second promotion (a flaky failure)
            raise redis.ConnectionError("down")

    stop = threading.Event()
    maintenance = Maintenance(settings, DownBroker())  # type: ignore[arg-type]
    thread = threading.Thread(target=maintenance.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(calls) >= 2, timeout=10, what="two attempts")
    finally:
        stop.set()
        thread.join(5)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    print(f"\npromotion retries while Redis is down: gaps {[round(g, 2) for g in gaps]} s")
    assert gaps and min(gaps) >= 0.9, gaps


def test_settlement_applies_only_while_the_lease_is_held(settings: Settings, broker: Broker) -> None:
    """A late settlement (the job was requeued by a reaper or at shutdown) or one re-sent
    after a lost reply adds no second copy of the job and counts nothing twice."""
    from reconcile.broker import SettleOp

    Record.perform_bulk([["a"], ["b"], ["c"]])
    queue = broker.keys.queue("default")
    d1, d2, d3 = broker.exchange("p1", ["default"], 3)
    broker.release("p1")  # as a reaper would after the lease expired: all three requeued
    assert broker.redis.llen(queue) == 3
    broker.settle("p1", [
        SettleOp.retry(d1.field, 100, d1.raw),
        SettleOp.dead(d2.field, d2.raw),
        SettleOp.push_back(d3.field, "default", d3.raw),
    ])
    assert broker.set_sizes() == {"scheduled": 0, "retry": 0, "dead": 0}
    assert broker.redis.llen(queue) == 3, "no second copy"
    assert broker.counters()["failed"] == 0

    (d,) = broker.exchange("p2", ["default"], 1)
    ack = SettleOp.ack(d.field)
    broker.settle("p2", [ack])
    broker.settle("p2", [ack])  # re-sent after a lost reply
    assert broker.counters()["processed"] == 1
    push_back = broker.exchange("p2", ["default"], 1)[0]
    op = SettleOp.push_back(push_back.field, "default", push_back.raw)
    broker.settle("p2", [op])
    broker.settle("p2", [op])
    assert broker.redis.llen(queue) == 2, "pushed back once"


def test_jobs_leased_by_a_lost_fetch_reply_come_back(settings: Settings, broker: Broker) -> None:
    """A fetch whose reply never reached the worker leaves jobs in its lease hash; the
    live worker's heartbeat keeps that lease alive, so its own sweep must return them."""
    jids = Record.set(queue="side").perform_bulk([f"o{i}"] for i in range(3))
    side = broker.keys.queue("side")
    with running_worker(settings, concurrency=2) as worker:  # works "default" only
        # the reply is "lost": the jobs are leased to the worker, which never saw them
        assert len(broker.exchange(worker.proc_id, ["side"], 3)) == 3
        t0 = time.monotonic()
        wait_for(lambda: broker.redis.llen(side) == 3, timeout=5 * settings.lease_seconds,
                 what="orphaned jobs back in their queue")
        took = time.monotonic() - t0
        assert broker.leased_count(worker.proc_id) == 0
    print(f"\njobs of a lost fetch reply back in their queue after {took:.2f}s "
          f"(heartbeat every {settings.lease_seconds / 4:.2f}s)")
    assert {orjson.loads(r)["jid"] for r in broker.queue_entries("side")} == set(jids)
    assert took < 3 * settings.lease_seconds / 4 + 0.5, "two to three heartbeats"


# -- the idle pickup of a single-queue worker: BLMOVE into a claim list ------------------


def test_claim_takes_the_oldest_job_and_adoption_leases_it_first(
    settings: Settings, broker: Broker
) -> None:
    """An idle single-queue worker blocks in ``claim`` (BLMOVE): the job arrives with the
    wake-up. ``exchange(adopt=queue)`` then moves it into the lease hash, listed first,
    beside newly leased jobs; a claim wait that finds nothing returns None in time."""
    t0 = time.monotonic()
    assert broker.claim("p1", "default", 0.2) is None
    waited = time.monotonic() - t0
    Record.perform_bulk([["c1"], ["c2"], ["c3"]])
    raw = broker.claim("p1", "default", 1.0)
    assert raw is not None and orjson.loads(raw)["args"] == ["c1"], "oldest first (FIFO)"
    assert broker.redis.lrange(broker.keys.claim("p1"), 0, -1) == [raw]
    got = broker.exchange("p1", ["default"], 1, adopt="default")
    assert [orjson.loads(d.raw)["args"] for d in got] == [["c1"], ["c2"]]
    assert got[0].raw == raw and got[0].queue == "default"
    assert broker.redis.exists(broker.keys.claim("p1")) == 0
    assert broker.leased_count("p1") == 2
    # adopting an empty claim list (a retried call) leases nothing twice
    assert broker.exchange("p1", ["default"], 0, adopt="default") == []
    print(f"\nempty claim wait of 0.2 s returned after {waited:.3f} s")
    assert 0.15 < waited < 1.0


def test_claimed_jobs_of_a_dead_or_stopping_process_go_back(
    settings: Settings, broker: Broker
) -> None:
    """A process killed between its claim and the adoption holds the job only in its claim
    list: the reaper returns it like a leased job (stamped as recovered), and release at
    shutdown pushes it back, so the claim window loses nothing."""
    Record.perform_bulk([["k1"], ["k2"]])
    broker.heartbeat("dead", {"queues": "default"})
    assert broker.claim("dead", "default", 1.0) is not None
    broker.redis.delete(broker.keys.alive("dead"))  # its lease expired: it was SIGKILLed
    broker.redis.zadd(broker.keys.beats, {"dead": 0})  # and its heartbeat lapsed
    result = broker.reap()
    assert (result.requeued, result.reaped_processes) == (1, 1)
    back = broker.queue_entries("default")
    assert [orjson.loads(r)["args"] for r in back] == [["k1"], ["k2"]], "k1 runs next"
    assert orjson.loads(back[0])["recovered"] == 1
    assert broker.redis.exists(broker.keys.claim("dead")) == 0

    broker.heartbeat("leaving", {"queues": "default"})
    assert broker.claim("leaving", "default", 1.0) is not None
    assert broker.release("leaving") == 1
    assert broker.redis.llen(broker.keys.queue("default")) == 2
    assert broker.redis.exists(broker.keys.claim("leaving")) == 0


def test_single_queue_worker_runs_claimed_jobs_once_and_stops_at_once(
    settings: Settings, broker: Broker
) -> None:
    """Jobs picked up one at a time by claims are run once and acked (their settlement
    waits for the adopted lease field); a stop while an executor thread waits in a
    claim ends the wait instead of sitting out ``idle_wait``, and leaves no claim behind."""
    Stamp.started.clear()
    signals = WorkerSignals()
    with running_worker(settings, concurrency=2, idle_wait=5.0, signals=signals) as worker:
        for i in range(30):
            signals.claim_waiting.wait()  # an executor thread blocks in its claim
            Stamp.event.clear()
            Stamp.perform_async(i)
            assert Stamp.event.wait(5), "job not picked up"
        wait_for(lambda: broker.counters()["processed"] == 30, what="30 acks")
        assert broker.leased_count(worker.proc_id) == 0
        signals.claim_waiting.wait()
        t0 = time.monotonic()
        worker.stop(2.0)
        took = time.monotonic() - t0
        proc = worker.proc_id
    print(f"\nstop of an idle single-queue worker (idle_wait 5 s) took {took:.3f} s")
    assert sorted(Stamp.started) == list(range(30))
    assert took < 1.0, "the claim wait was ended, not sat out"
    assert broker.redis.exists(broker.keys.claim(proc)) == 0
    assert broker.redis.llen(broker.keys.queue("default")) == 0


def test_a_job_claimed_just_before_stop_is_acked_not_pushed_back(
    settings: Settings, broker: Broker
) -> None:
    """A claimed job's ack waits for the fetcher to adopt it into the lease hash. A stop
    that comes while the fetcher has yet to adopt a claimed (and finished) job waits for
    the fetcher, which adopts on its way out: the job is acked, not released back to its
    queue by release.lua for a second run. Here the idle fetcher, woken by the claim, is
    held before it adopts (still idle) until stop() has begun, and for a second after."""
    signals = WorkerSignals()
    with running_worker(settings, concurrency=1, signals=signals) as worker:
        signals.claim_waiting.wait()
        signals.fetcher_woke.hold(lambda claimed: claimed > 0)
        Record.perform_async("claimed")
        wait_for(lambda: counts(broker).get("claimed") == 1, what="the claimed job ran")
        signals.fetcher_woke.wait_for(lambda claimed: claimed > 0)  # held there
        stopper = threading.Thread(target=worker.stop, args=(2.0,))
        stopper.start()
        signals.quiet.wait()  # stop() has begun
        with pytest.raises(TimeoutError):
            signals.stopped.wait(1.0)  # stop() waits for the adoption
        signals.fetcher_woke.release()
        assert signals.adopted.wait() == 1
        assert signals.stopped.wait() == 0, "nothing pushed back"
        stopper.join(10)
        proc = worker.proc_id
    assert counts(broker) == {"claimed": 1}
    assert broker.redis.llen(broker.keys.queue("default")) == 0, "not pushed back"
    assert broker.redis.exists(broker.keys.claim(proc)) == 0
    assert broker.counters()["processed"] == 1


class Nap(Job):
    """Waits 2 ms, as a job waiting on its database would (the GIL is released)."""

    done: ClassVar[list[int]] = []

    def perform(self, n: int) -> None:
        time.sleep(0.002)
        Nap.done.append(n)


def test_finished_jobs_wake_the_fetcher_once_per_batch_not_once_per_job(
    settings: Settings, broker: Broker
) -> None:
    """A finished job wakes the fetcher only when it can fetch (room for a batch of
    ``refill`` jobs, or an empty buffer): waking it for every finished job would cost a
    thread switch and a GIL hand-over per job, most of them followed by going back to
    sleep."""
    n = 600
    Nap.done = []
    Nap.perform_bulk([i] for i in range(n))
    signals = WorkerSignals()
    worker = Worker(settings.with_overrides(concurrency=4, prefetch=12), [parse_queue("default")],
                    signals=signals)
    assert worker.refill == 6
    worker.start()
    try:
        wait_for(lambda: len(Nap.done) == n, timeout=20, what=f"{n} jobs done")
    finally:
        worker.stop(2.0)
    waits = signals.fetcher_waits.fired
    print(f"\nthe fetcher waited {waits} times for {n} jobs (batches of at least {worker.refill})")
    assert sorted(Nap.done) == list(range(n))
    # one wait per batch of at least 6 jobs (n / 6 = 100), not one per finished job
    assert 0 < waits < n / 3, f"{waits} waits for {n} jobs"
