"""Scenario 3: Redis with a small ``maxmemory``.

* ``noeviction``: enqueues meet back-pressure with a clear error
  (:class:`~reconcile.errors.BrokerError` naming the cause and what was not enqueued),
  workers keep draining (their heartbeats must not lapse), and nothing is lost: passes
  enqueue the rest as memory frees.
* ``allkeys-lru``: Redis evicts queued jobs, leases, locks, the sentinel; the scheduler
  sees the evictions (``evicted_keys``) and re-derives the work, dropping locks that
  outlived their jobs.
"""

from __future__ import annotations

import time

import pytest

from reconcile import config
from reconcile.errors import BrokerError
from tests.fault.conftest import MakeWorld
from tests.fault.harness import SOAK
from tests.fault.oracle_app import Oracle
from tests.fault.results import record

KEYS = 30_000 if SOAK else 5_000
MAXMEMORY = "2mb"


def test_noeviction_back_pressure(make_world: MakeWorld) -> None:
    world = make_world(maxmemory=MAXMEMORY, policy="noeviction")
    world.seed(KEYS)
    config.use_settings(world.settings)
    with pytest.raises(BrokerError) as refused:
        Oracle.perform_bulk([[k] for k in range(1, KEYS + 1)])
    message = str(refused.value)
    assert "out of memory" in message and "maxmemory" in message
    queued_at_limit = world.queued()
    t0 = time.monotonic()
    world.scheduler(FAULT_EVERY=1)
    for _ in range(2):
        world.worker(concurrency=6)
    world.wait(lambda: world.pending() == 0, 240, "every key done")
    heal = time.monotonic() - t0
    runs = world.runs()
    refused_passes = sum(1 for r in runs if r["error"] and "out of memory" in r["error"])
    reaped = sum(t.count("recovered") for t in (p.tail(100_000) for p in world.procs))
    f = world.figures()
    record("3a", f"maxmemory {MAXMEMORY}, noeviction: {KEYS:,} keys into a full Redis", f,
           heal=f"all done {heal:.1f} s after workers started (queue held {queued_at_limit:,} "
                "jobs at the limit)",
           heal_seconds=heal, target="nothing lost; enqueue errors are clear",
           notes=f"client enqueue raised BrokerError: \"{message[:120]}...\"; passes that recorded "
                 f"the refusal: {refused_passes}; live workers reaped as dead: {reaped}")
    assert f.lost == 0
    assert f.dup_effects == 0


def test_allkeys_lru_evicted_work_heals(make_world: MakeWorld) -> None:
    world = make_world(maxmemory=MAXMEMORY, policy="allkeys-lru")
    world.seed(KEYS)
    t0 = time.monotonic()
    world.scheduler(FAULT_EVERY=2)
    for _ in range(2):
        world.worker(concurrency=6)
    world.wait(lambda: world.pending() == 0, 240, "every key done")
    heal = time.monotonic() - t0
    evicted = int(world.redis.info("stats")["evicted_keys"])
    loss_passes = sum(1 for r in world.runs() if r["trigger"] == "redis_loss")
    f = world.figures()
    record("3b", f"maxmemory {MAXMEMORY}, allkeys-lru: {KEYS:,} keys, queues evicted", f,
           heal=f"all done {heal:.1f} s after start with {evicted:,} keys evicted",
           heal_seconds=heal, target="evicted work heals (no wait for lock expiry, 600 s)",
           notes=f"{loss_passes} passes triggered by detected evictions")
    assert evicted > 0, "the scenario must actually evict"
    assert f.lost == 0
    assert f.dup_effects == 0
