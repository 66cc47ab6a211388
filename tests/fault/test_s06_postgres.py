"""Scenario 6: PostgreSQL faults.

* ``pg_ctl stop -m immediate`` mid-run, then a restart (crash recovery): every worker
  and scheduler connection dies at once;
* worker backends killed with ``pg_terminate_backend`` while they work, from outside
  (at random) and from inside the worker right around COMMIT (before it is sent, or
  racing it: an unknown outcome that step 2 must resolve on re-delivery).
"""

from __future__ import annotations

import random
import time

from tests.fault.harness import SOAK, WORKER_APP_NAME, World
from tests.fault.results import record

KEYS = 10_000 if SOAK else 3_000


def test_postgres_crash_and_restart(world: World) -> None:
    world.seed(KEYS)
    world.scheduler(FAULT_EVERY=2)
    for _ in range(2):
        world.worker(concurrency=6)
    world.wait(lambda: world.done() >= KEYS * 0.3, 120, "30% done")
    left = world.pending()
    t_crash = time.monotonic()
    world.pg.crash()
    down = time.monotonic()
    world.pg.start()
    world.pg.wait_ready()
    outage = time.monotonic() - t_crash
    t0 = time.monotonic()
    at_restart = world.wait(lambda: world.done() + 1, 30, "PostgreSQL answering") - 1
    flowing = world.timed(lambda: world.done() >= at_restart + 50, 60, "50 keys done after the restart")
    world.wait(lambda: world.pending() == 0, 180, "every key done after the restart")
    heal = time.monotonic() - t0
    f = world.figures()
    record("6 crash", f"PostgreSQL stop -m immediate + restart with {left:,} of {KEYS:,} keys pending",
           f, heal=f"work flowing {flowing:.1f} s after the restart, all done {heal:.1f} s "
                   f"(outage {outage:.1f} s)",
           heal_seconds=flowing, target="work resumes within a few seconds (no retry backoff)",
           notes=f"PostgreSQL down {down - t_crash:.1f} s after the stop command; deliveries whose "
                 "connection died are re-scheduled in 1-3 s without spending a retry")
    assert flowing <= 10
    assert f.lost == 0
    assert f.dup_effects == 0


def test_backends_terminated_around_commit(world: World) -> None:
    world.seed(KEYS)
    world.scheduler(FAULT_EVERY=2)
    for _ in range(2):
        world.worker(concurrency=6, FAULT_KILL_AT_COMMIT=0.02)
    rng = random.Random()
    killed = 0
    while world.done() < KEYS * 0.7:
        killed += world.pg.terminate(world.dbname, WORKER_APP_NAME,
                                     ("active", "idle in transaction"), limit=2)
        time.sleep(rng.uniform(0.05, 0.2))  # fault injection cadence, not a wait
        world.check_procs()
    t0 = time.monotonic()
    world.wait(lambda: world.pending() == 0, 180, "every key done")
    heal = time.monotonic() - t0
    at_commit = sum(n for (k, _), n in world.attempts().items() if k == "T")
    f = world.figures()
    record("6 terminate", f"pg_terminate_backend of worker backends, {KEYS:,} keys", f,
           heal=f"all done {heal:.1f} s after the last kill",
           heal_seconds=heal, target="killed jobs retried; no effect lost or doubled",
           notes=f"{killed} backends killed from outside at random, {at_commit} by the worker "
                 "itself right around COMMIT")
    assert f.lost == 0
    assert f.dup_effects == 0
