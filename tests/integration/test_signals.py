"""Real worker processes (``reconcile worker``) under signals and crashes.

Figures are printed (run with ``-s``): jobs lost (must be 0), duplicate executions,
time for a SIGKILLed worker's jobs to come back, time to exit on TERM.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from reconcile.broker import Broker
from reconcile.config import Settings
from tests.jobs_core import KillSelf, Record, Sleep, counts, spawn_worker, wait_for

pytestmark = pytest.mark.fault

LEASE = 2.0
"""lease_seconds of the worker processes."""

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn(settings: Settings, tmp_path: Path) -> Iterator[Spawn]:
    """Start ``reconcile worker`` processes in this test's namespace; kill leftovers."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, **env: Any) -> subprocess.Popen[bytes]:
        env.setdefault("lease_seconds", LEASE)
        log = tmp_path / f"worker{len(procs)}.log"
        proc = spawn_worker(settings.redis_url, settings.namespace, *args, log=log, **env)
        proc.log = log  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def logs(proc: subprocess.Popen[bytes], tail: int = 3000) -> str:
    return str(proc.log.read_text(errors="replace")[-tail:])  # type: ignore[attr-defined]


def registered(broker: Broker, n: int = 1) -> list[dict[str, Any]]:
    """Wait for ``n`` worker processes to be registered (their signal handlers are in)."""
    return wait_for(lambda: len(broker.processes()) == n and broker.processes(), timeout=15,
                    what=f"{n} registered worker(s)")


def queued_jids(broker: Broker) -> set[str]:
    return {orjson.loads(r)["jid"] for r in broker.queue_entries("default", 100_000)}


def test_sigkill_mid_run_loses_no_job(spawn: Spawn, broker: Broker) -> None:
    n = 300
    tokens = [f"k{i}" for i in range(n)]
    Sleep.perform_bulk([t, 0.02] for t in tokens)
    victim = spawn("-c", "5")
    [info] = registered(broker)
    wait_for(lambda: len(counts(broker)) >= 80, timeout=15, what="80 jobs done")
    held = broker.leased_count(info["id"])
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.wait(5)
    done_at_kill = len(counts(broker))

    rescuer = spawn("-c", "5")
    wait_for(lambda: info["id"] not in {p["id"] for p in broker.processes()}, timeout=15,
             what="the killed worker's leases reaped")
    recovered_in = time.monotonic() - killed_at
    wait_for(lambda: len(counts(broker)) == n, timeout=30, what="every job done")
    healed_in = time.monotonic() - killed_at

    done = counts(broker)
    lost = [t for t in tokens if t not in done]
    duplicates = sum(c - 1 for c in done.values())
    restarts = sum(c - 1 for c in counts(broker, "started").values())
    print(f"\nSIGKILL with {held} leased jobs ({done_at_kill}/{n} done): lost {len(lost)}, "
          f"duplicate completions {duplicates}, re-started {restarts}, "
          f"leases back in {recovered_in:.2f}s "
          f"(lease {LEASE}s), all {n} done {healed_in:.2f}s after the kill")
    assert lost == [], logs(rescuer)
    # a job re-runs only if it was leased by the killed worker
    assert duplicates <= held and restarts <= held
    assert recovered_in < LEASE + LEASE * 3 / 8 + 1.5, "lease + reaper interval + start-up"
    assert broker.redis.llen(broker.keys.queue("default")) == 0


def test_term_pushes_back_unfinished_jobs_and_exits_within_timeout(
    spawn: Spawn, broker: Broker
) -> None:
    jids = set(Sleep.perform_bulk([f"s{i}", 30] for i in range(10)))
    proc = spawn("-c", "3", "-t", "1")
    [info] = registered(broker)
    wait_for(lambda: len(counts(broker, "started")) == 3, what="3 jobs running")
    wait_for(lambda: broker.leased_count(info["id"]) == 6, what="3 running + 3 prefetched")
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    rc = proc.wait(15)
    took = time.monotonic() - t0
    print(f"\nTERM with 3 jobs stuck running, -t 1: exited in {took:.2f}s (rc {rc})")
    assert rc == 0, logs(proc)
    assert took < 1 + 1.5, logs(proc)
    assert queued_jids(broker) == jids, "every unfinished job is back in its queue"
    assert broker.processes() == [] and broker.leased_count(info["id"]) == 0
    assert counts(broker) == {}


def test_term_lets_running_jobs_finish_within_timeout(spawn: Spawn, broker: Broker) -> None:
    jids = Sleep.perform_bulk([f"s{i}", 0.5] for i in range(10))
    proc = spawn("-c", "3", "--prefetch", "1", "-t", "10")
    registered(broker)
    wait_for(lambda: len(counts(broker, "started")) == 3, what="3 jobs running")
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    rc = proc.wait(15)
    took = time.monotonic() - t0
    done = counts(broker)
    print(f"\nTERM with 3 short jobs running, -t 10: exited in {took:.2f}s after they finished")
    assert rc == 0 and took < 3, logs(proc)
    assert sorted(done) == ["s0", "s1", "s2"], "running jobs finished and were acked"
    assert queued_jids(broker) == set(jids[3:]), "the rest (queued or prefetched) are back"


def test_tstp_goes_quiet_but_finishes_running_jobs(spawn: Spawn, broker: Broker) -> None:
    Sleep.perform_async("slow", 1.0)
    proc = spawn("-c", "2", "--prefetch", "0")
    [info] = registered(broker)
    wait_for(lambda: counts(broker, "started"), what="slow job started")
    proc.send_signal(signal.SIGTSTP)
    wait_for(lambda: broker.processes()[0]["quiet"] == "1", what="heartbeat says quiet")
    Record.perform_bulk([f"r{i}"] for i in range(5))
    wait_for(lambda: "slow" in counts(broker), what="running job finished while quiet")
    # let the process live through two more heartbeats: still nothing fetched
    beat = float(broker.processes()[0]["beat"])
    wait_for(lambda: float(broker.processes()[0]["beat"]) > beat + LEASE / 4, timeout=5,
             what="two heartbeats")
    assert proc.poll() is None, "TSTP does not stop the process"
    assert counts(broker) == {"slow": 1}
    assert broker.redis.llen(broker.keys.queue("default")) == 5
    assert broker.leased_count(info["id"]) == 0
    proc.send_signal(signal.SIGTTIN)
    wait_for(lambda: "thread reconcile-heartbeat" in logs(proc, 10**6), what="TTIN thread dump")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    # the quiet worker's jobs are still there for the next one
    proc2 = spawn("-c", "2")
    wait_for(lambda: len(counts(broker)) == 6, timeout=15, what="jobs run by the next worker")
    proc2.send_signal(signal.SIGTERM)
    assert proc2.wait(10) == 0


def test_job_that_keeps_killing_workers_goes_dead(spawn: Spawn, broker: Broker) -> None:
    max_recoveries = 1
    lease = 1.0
    jid = KillSelf.perform_async("pill")
    good = [f"g{i}" for i in range(20)]
    Record.perform_bulk([g] for g in good)
    crashes = 0
    t0 = time.monotonic()
    proc = spawn("-c", "2", lease_seconds=lease, max_recoveries=max_recoveries)

    def dead() -> list[dict[str, Any]]:
        return [orjson.loads(raw) for raw, _ in broker.set_entries("dead", 0, -1)]

    while not any(e["class"] == "core.KillSelf" for e in dead()):
        assert time.monotonic() - t0 < 30, "the poison pill never went dead"
        if proc.poll() is not None:
            assert proc.returncode == -signal.SIGKILL, logs(proc)
            crashes += 1
            proc = spawn("-c", "2", lease_seconds=lease, max_recoveries=max_recoveries)
        time.sleep(0.02)
    took = time.monotonic() - t0
    [entry] = [e for e in dead() if e["class"] == "core.KillSelf"]
    print(f"\npoison pill: {crashes} worker crashes, dead after {took:.1f}s "
          f"(max_recoveries {max_recoveries}, lease {lease}s): {entry['error_message']}")
    assert entry["jid"] == jid and entry["error_class"] == "WorkerCrashed"
    assert crashes == max_recoveries + 1
    assert counts(broker, "started") == {"pill": crashes}

    # a recovered job is leased alone, so jobs fetched beside the pill are not counted
    # as recovered again and again: none of them dies with it
    def settled() -> tuple[set[str], set[str]]:
        bystanders = {e["args"][0] for e in dead() if e["class"] == "core.Record"}
        return set(counts(broker)), bystanders

    wait_for(lambda: set.union(*settled()) >= set(good), timeout=15, what="good jobs done or dead")
    done, bystanders = settled()
    lost = set(good) - done - bystanders
    print(f"good jobs enqueued behind it: {len(good)}; ran {len(done)}, sent dead with the "
          f"pill {len(bystanders)} {sorted(bystanders)}, lost {len(lost)}")
    assert lost == set()
    assert bystanders == set()
    assert proc.poll() is None, "the last worker survived the reap and still runs jobs"
    Record.perform_bulk([f"after{i}"] for i in range(5))
    wait_for(lambda: {f"after{i}" for i in range(5)} <= set(counts(broker)), what="new jobs run")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
