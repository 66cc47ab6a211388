"""Liveness and readiness as observe/health.py states them, on a real in-process worker
and scheduler: each check fails for the reason it names, and only for it."""

from __future__ import annotations

import threading
import time

import redis

from reconcile.config import Settings
from reconcile.observe.health import SCHEDULER_STALE_SECONDS, scheduler_health, worker_health
from reconcile.scheduler.service import Scheduler
from tests.jobs_core import running_worker


def test_a_running_worker_is_live_and_ready(settings: Settings) -> None:
    with running_worker(settings, ["health"]) as w:
        live, ready = worker_health(w, "live"), worker_health(w, "ready")
        assert live.ok and ready.ok, (live.reasons, ready.reasons)
        assert live.body("live")["status"] == "ok" and live.details["process"] == w.proc_id


def test_a_stalled_heartbeat_fails_liveness_and_a_silent_redis_only_readiness(settings: Settings) -> None:
    with running_worker(settings, ["health"]) as w:
        hb = w.heartbeat
        hb.redis_ok_at = time.monotonic() - 10 * hb.interval  # beats Redis did not take
        live, ready = worker_health(w, "live"), worker_health(w, "ready")
        assert live.ok, "Redis down: alive (a restart would not bring Redis back)"
        assert not ready.ok and "Redis has not answered a heartbeat" in ready.reasons[0]
        hb.looped_at = time.monotonic() - 10 * hb.interval  # the loop itself is stuck
        live = worker_health(w, "live")
        assert not live.ok and "heartbeat loop has not gone round" in live.reasons[0]
        assert worker_health(w, "live").body("live")["status"] == "fail"


def test_a_dead_fetcher_fails_liveness_until_the_worker_is_quiet(settings: Settings) -> None:
    with running_worker(settings, ["health-a", "health-b"]) as w:
        # the fetcher is the thread that leases jobs: replace it in the table by a dead one
        dead = threading.Thread(target=lambda: None, name="reconcile-fetcher")
        dead.start()
        dead.join()
        w._threads = [dead if t.name == "reconcile-fetcher" else t for t in w._threads]
        live = worker_health(w, "live")
        assert not live.ok and live.reasons == ["the fetcher thread has ended"]
        w.quiet()  # a quiet worker's fetcher ends on purpose
        assert worker_health(w, "live").ok
        ready = worker_health(w, "ready")
        assert not ready.ok and "quiet" in ready.reasons[0]


def test_a_scheduler_is_ready_once_a_round_went_through_and_live_while_it_loops(
    pg_settings: Settings, engine: object
) -> None:
    s = Scheduler(pg_settings, [])
    assert scheduler_health(s, "live").ok
    ready = scheduler_health(s, "ready")
    assert not ready.ok and "no round has gone through yet" in ready.reasons[0]
    runner = threading.Thread(target=s.run, kwargs={"tick": 0.05}, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while not scheduler_health(s, "ready").ok:
            assert time.monotonic() < deadline, scheduler_health(s, "ready").reasons
            time.sleep(0.05)
    finally:
        s.stop()
        runner.join(30)
    s.looped_at = time.monotonic() - SCHEDULER_STALE_SECONDS - 1  # its loop stopped going round
    live = scheduler_health(s, "live")
    assert not live.ok and "loop has not gone round" in live.reasons[0]
    assert not scheduler_health(s, "ready").ok


def test_a_probe_makes_no_round_trip(settings: Settings) -> None:
    with running_worker(settings, ["health"]) as w:
        calls = []
        original = redis.Redis.execute_command

        def counting(self: redis.Redis, *args: object, **kw: object) -> object:
            if threading.current_thread() is threading.main_thread():
                calls.append(args[0])
            return original(self, *args, **kw)

        redis.Redis.execute_command = counting  # type: ignore[method-assign]
        try:
            for _ in range(100):
                worker_health(w, "ready")
        finally:
            redis.Redis.execute_command = original  # type: ignore[method-assign]
        assert calls == []
