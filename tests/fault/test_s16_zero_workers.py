"""Scenario 16: zero workers (an autoscaler scaled the worker deployment to zero).

Promotion of the scheduled and retry sets must not depend on a worker being alive:
with no worker running, a scheduler alone moves jittered pass keys and a ``perform_in``
job to their queue (so a scaler watching the queue depth sees it grow and starts
workers), and, when the last worker is SIGKILLed holding leases, a scheduler alone
returns them to the queue. Then workers start, and every key is done once.
"""

from __future__ import annotations

import time

import orjson

from reconcile import config
from tests.fault.harness import LEASE, SOAK, World
from tests.fault.oracle_app import Oracle
from tests.fault.results import record

KEYS = 2_000 if SOAK else 300
JITTER = 3.0
"""The pass's jitter window: every key goes to the scheduled set first."""
PROMOTE_BOUND = JITTER + 0.5 * 1.5 + 1.0
"""The jitter window, plus the longest promotion interval (1.5 x poll_interval 0.5 s),
plus polling slack: every key is in its queue by then after the pass."""
REAP_BOUND = LEASE * 1.375 + 0.5
"""lease_seconds, plus the reaper's longest interval (3/8 lease), plus polling slack."""


def queued_payloads(world: World) -> list[dict[str, object]]:
    return [orjson.loads(raw) for raw in world.broker.queue_entries("oracle", KEYS + 10)]


def test_a_scheduler_alone_promotes_jittered_pass_keys_and_perform_in_jobs(world: World) -> None:
    world.seed(KEYS)
    config.configure(redis_url=world.settings.redis_url, database_url=world.url,
                     namespace=world.namespace)
    # a key outside the seeded ones (no row: its delivery will be already_done)
    jid = Oracle.perform_in(1.0, KEYS + 1)
    assert jid, "perform_in was refused"
    started = time.monotonic()
    world.scheduler(FAULT_EVERY=600, FAULT_JITTER=JITTER)
    # the first pass runs at once and puts every key in the scheduled set, jittered
    world.wait(lambda: len(world.runs()) >= 1 and world.runs()[0].get("finished_at") is not None,
               60, "the first pass")
    promoted = world.timed(lambda: world.redis.zcard(world.broker.keys.schedule) == 0
                           and world.redis.llen(world.broker.keys.queue("oracle")) >= KEYS + 1,
                           60, "every scheduled job promoted by the scheduler")
    since_start = time.monotonic() - started
    assert world.registered_workers() == {}, "a worker ran: the scenario needs zero"
    payloads = queued_payloads(world)
    assert jid in {p["jid"] for p in payloads}, "the perform_in job did not reach its queue"
    assert {p["args"][0] for p in payloads} == set(range(1, KEYS + 2))  # type: ignore[index]
    # scaled up again: the queue drains
    world.worker(concurrency=8)
    world.wait(lambda: world.pending() == 0, 120, "every key done")
    f = world.figures()
    record("16a", f"zero workers: a scheduler promotes {KEYS} jittered pass keys and a perform_in job",
           f, heal=f"all in the queue {promoted:.2f} s after the pass ({since_start:.1f} s after "
                   f"the scheduler started), with no worker",
           heal_seconds=promoted, target=f"<= jitter {JITTER:.0f} s + 1.5 x poll interval "
                                         f"({PROMOTE_BOUND:.1f} s)",
           notes="before: nothing promoted until a worker starts")
    assert f.lost == 0
    assert f.dup_effects == 0
    assert promoted <= PROMOTE_BOUND


def test_a_scheduler_alone_reaps_the_last_workers_leases(world: World) -> None:
    world.seed(KEYS)
    world.scheduler(FAULT_EVERY=600)
    last = world.worker(concurrency=4, FAULT_SLOW=0.05, FAULT_CRASH_AT="inside_perform",
                        FAULT_CRASH_AFTER=20)
    last.expect_alive = False
    proc_id = world.wait_registered(last)[last.pid]
    lease = world.broker.keys.lease(proc_id)
    world.wait(lambda: not last.alive(), 60, "the last worker's crash")
    held = int(world.redis.hlen(lease))
    assert held > 0, "the crash left nothing leased: raise FAULT_CRASH_AFTER or KEYS"
    queued_before = int(world.redis.llen(world.broker.keys.queue("oracle")))
    back = world.timed(lambda: not world.redis.exists(lease), 30,
                       "the dead last worker's leases reaped by the scheduler")
    assert world.redis.llen(world.broker.keys.queue("oracle")) == queued_before + held
    assert world.registered_workers() == {}, "a live worker reaped: the scenario needs zero"
    world.worker(concurrency=8)
    world.wait(lambda: world.pending() == 0, 120, "every key done")
    f = world.figures()
    assert world.crashes() == 1
    record("16b", f"zero workers: the last worker SIGKILLed, {KEYS} keys", f,
           heal=f"{held} leased jobs back in the queue {back:.2f} s after the kill, reaped by "
                f"the scheduler", heal_seconds=back,
           target=f"<= lease {LEASE:.0f} s + reaper interval ({REAP_BOUND:.1f} s)",
           notes="passes every 600 s: only the scheduler's reaper heals")
    assert f.lost == 0
    assert f.dup_effects == 0
    assert back <= REAP_BOUND
