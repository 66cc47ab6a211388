"""Scenario 5: SIGTERM with jobs in flight.

* jobs that finish within ``-t``: the worker waits for them, acks them, pushes back
  what it had only prefetched, and exits; nothing runs twice;
* jobs that run past ``-t``: the worker pushes them back and exits on time; their
  transactions die with the process (never committed), so a second worker runs them
  again: duplicate executions, never duplicate effects.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.fault.harness import World
from tests.fault.results import record

KEYS = 24
CONCURRENCY = 4


@pytest.mark.parametrize(("case", "slow", "grace"), [("within", 1.0, 8.0), ("past", 6.0, 1.0)])
def test_sigterm_with_jobs_in_flight(world: World, case: str, slow: float, grace: float) -> None:
    world.seed(KEYS)
    world.scheduler(FAULT_EVERY=60)
    first = world.worker("-t", str(grace), concurrency=CONCURRENCY, FAULT_SLOW=slow)
    world.wait(lambda: sum(n for (k, _), n in world.attempts().items() if k == "P") >= CONCURRENCY,
               30, "every executor thread inside a perform")
    in_flight = {key for (k, key), n in world.attempts().items() if k == "P"}
    exit_s = world.stop(first, signal.SIGTERM, timeout=grace + slow + 15)
    exit_code = first.popen.returncode
    t0 = time.monotonic()
    world.worker(concurrency=CONCURRENCY)  # finishes the rest (not slow)
    world.wait(lambda: world.pending() == 0, 60, "every key done")
    all_done = time.monotonic() - t0 + exit_s
    f = world.figures()
    rerun = sum(1 for key in in_flight if f.per_key_performs[int(key)] > 1)
    record(f"5 {case}", f"SIGTERM, {len(in_flight)} jobs in flight taking {slow:.0f} s, -t {grace:.0f}",
           f, heal=f"worker exited {exit_s:.2f} s after TERM (code {exit_code}); all done {all_done:.1f} s",
           heal_seconds=exit_s,
           target=f"exit <= -t {grace:.0f} s + job time" if case == "within"
           else f"exit <= -t {grace:.0f} s + 1 s, jobs pushed back",
           notes=f"{rerun} in-flight jobs ran again on another worker")
    assert exit_code == 0
    assert f.lost == 0
    assert f.dup_effects == 0
    if case == "within":
        assert rerun == 0, "jobs that finished within -t must not run again"
        assert exit_s <= slow + 3
    else:
        assert rerun == len(in_flight), "jobs past -t run again elsewhere"
        assert exit_s <= grace + 3
