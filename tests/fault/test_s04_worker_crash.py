"""Scenario 4: a worker SIGKILLed at each crash point.

The crashing worker kills itself (SIGKILL, from the oracle app) on its N-th delivery:
before perform (no transaction yet), inside perform (effect written, not committed),
or after the commit and before the ack. Its leases must come back within the lease
time (plus the reaper's interval) through a live worker's reaper; passes run only
every 60 s, so they cannot be what heals.
"""

from __future__ import annotations

import time

import pytest

from tests.fault.harness import LEASE, SOAK, World
from tests.fault.results import record

KEYS = 4_000 if SOAK else 1_000
CRASHES = 5 if SOAK else 2
REAP_BOUND = LEASE * 1.375 + 0.5
"""lease_seconds, plus the reaper's longest interval (3/8 lease), plus polling slack."""


@pytest.mark.parametrize("point", ["before_perform", "inside_perform", "after_commit"])
def test_worker_sigkill_at_crash_point(world: World, point: str) -> None:
    world.seed(KEYS)
    world.scheduler(FAULT_EVERY=60)
    survivor = world.worker(concurrency=4, FAULT_SLOW=0.05)
    world.wait_registered(survivor)
    back: list[float] = []
    held: list[int] = []
    for i in range(CRASHES):
        crashy = world.worker(concurrency=4, FAULT_SLOW=0.05, FAULT_CRASH_AT=point,
                              FAULT_CRASH_AFTER=8)
        crashy.expect_alive = False
        proc_id = world.wait_registered(crashy)[crashy.pid]
        lease = world.broker.keys.lease(proc_id)
        world.wait(lambda c=crashy: not c.alive() or world.pending() == 0, 60,
                   f"crash {i + 1} at {point}")
        assert not crashy.alive(), "the run ended before the crash: raise KEYS"
        died = time.monotonic()
        held.append(int(world.redis.hlen(lease)))
        back.append(world.timed(lambda k=lease: not world.redis.exists(k), 30,
                                "the dead worker's leases reaped"))
        print(f"crash {i + 1} at {point}: {held[-1]} leased jobs back in {back[-1]:.2f}s")
    world.wait(lambda: world.pending() == 0, 120, "every key done")
    all_done = time.monotonic() - died
    f = world.figures()
    assert world.crashes() == CRASHES
    record(f"4 {point}", f"worker SIGKILL {point.replace('_', ' ')} x{CRASHES}, {KEYS} keys", f,
           heal=f"leases back {max(back):.2f} s after the kill (max of {CRASHES}, "
                f"{sum(held)} jobs); all done {all_done:.1f} s",
           heal_seconds=max(back), target=f"<= lease {LEASE:.0f} s + reaper interval "
                                          f"({REAP_BOUND:.1f} s)",
           notes="passes every 60 s: only the reaper heals", reap_seconds=back)
    assert f.lost == 0
    assert f.dup_effects == 0
    assert max(back) <= REAP_BOUND
