"""Scenario 1: Redis FLUSHALL at random moments, repeated, during a run of 20,000 keys.

Passes run every 60 s here, so only the scheduler's Redis-loss detection (epoch
sentinel, run_id) can bring the flushed work back in time: the target is every
pending key back in Redis within 5 s of a flush.
"""

from __future__ import annotations

import random
import time

from tests.fault.harness import SOAK, World, db_now, loss_pass_done
from tests.fault.results import record

KEYS = 100_000 if SOAK else 20_000
FLUSHES = 8 if SOAK else 3
HEAL_TARGET = 5.0


def test_flushall_repeatedly_during_a_run(world: World) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    world.seed(KEYS)
    world.scheduler(FAULT_EVERY=60)
    for _ in range(2):
        world.worker(concurrency=8)
    # flush points: spread over the run, each at a random fraction of the keys done
    slots = [(i + rng.uniform(0.15, 0.85)) / (FLUSHES + 0.5) for i in range(FLUSHES)]
    requeue: list[float] = []
    started = time.monotonic()
    for fraction in slots:
        world.wait(lambda f=fraction: world.done() >= KEYS * f, 300, f"{fraction:.0%} of keys done")
        since = db_now(world)
        left = world.pending()
        t0 = time.monotonic()
        world.redis.flushall()
        requeue.append(world.timed(lambda s=since: loss_pass_done(world, s), 60,
                                   "a redis_loss pass after the flush"))
        print(f"flush with {left} pending: all re-enqueued {requeue[-1]:.2f}s later")
    done_after = time.monotonic() - t0
    world.wait(lambda: world.pending() == 0, 300, "every key done")
    done_after = time.monotonic() - t0
    total = time.monotonic() - started
    f = world.figures()
    record("1", f"Redis FLUSHALL x{FLUSHES} at random moments during {KEYS:,} keys", f,
           heal=f"re-enqueued {max(requeue):.2f} s (max of {len(requeue)}); all done "
                f"{done_after:.1f} s after the last flush",
           heal_seconds=max(requeue), target=f"re-enqueued <= {HEAL_TARGET:.0f} s",
           notes=f"seed {seed}; run {total:.0f} s; passes every 60 s, so only loss "
                 "detection heals", requeue_seconds=requeue)
    assert f.lost == 0
    assert f.dup_effects == 0
    assert max(requeue) <= HEAL_TARGET
