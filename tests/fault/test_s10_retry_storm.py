"""Scenario 10: a retry storm. Every key's perform fails 3 times, then recovers.

Time is driven, not waited for: each failed job sits in the retry set with Sidekiq's
backoff (``count**4 + 15 + rand(10) * (count + 1)`` s, checked against its score), and
is promoted by moving its score to now only after at least one reconcile pass has run
while it waited. Passes (every second) must not bypass the backoff: the uniqueness
lock is held through the retry, so they report the key as already queued, and each key
is performed exactly 4 times.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from tests.fault.harness import SOAK, World
from tests.fault.results import record

KEYS = 500 if SOAK else 120
FAILS = 3
SETTLE = 0.25
"""Seconds a failure may take to be settled: the backoff counts from the settlement, on
the Redis server's clock (fetch.lua adds the delay to TIME), while the payload's
``failed_at`` / ``retried_at`` is the worker's clock at the failure, a few ms earlier."""


def finished_passes(world: World) -> int:
    return sum(1 for r in world.runs() if r["finished_at"] is not None)



def lock_held(world: World, lock: str) -> bool:
    """Whether a payload's uniqueness lock is held: a pass lock ``@<class>\\n<args>``
    (a member of either generation of the class's set), or a digest's key."""
    keys = world.broker.keys
    if lock.startswith("@"):
        job, member = lock[1:].split("\n", 1)
        return bool(world.redis.sismember(keys.plocks(job), member)
                    or world.redis.sismember(keys.plocks_prev(job), member))
    return bool(world.redis.exists(keys.unique(lock)))

def test_retry_storm_follows_the_backoff(world: World) -> None:
    world.seed(KEYS)
    world.scheduler(FAULT_EVERY=1)
    for _ in range(2):
        world.worker(concurrency=4, FAULT_FAIL_TIMES=FAILS)
    keys = world.broker.keys
    seen: dict[tuple[str, int], tuple[float, int]] = {}  # (jid, count) -> (first seen, passes then)
    delays: list[tuple[int, float]] = []
    locked = 0
    promoted: set[tuple[str, int]] = set()
    last_promotion = time.monotonic()
    deadline = time.monotonic() + 120
    while world.pending() > 0 or world.redis.zcard(keys.retry):
        assert time.monotonic() < deadline, "retry storm did not settle"
        world.check_procs()
        passes = finished_passes(world)
        due: list[bytes] = []
        for member, score in world.redis.zrange(keys.retry, 0, -1, withscores=True):
            p: dict[str, Any] = orjson.loads(member)
            ident = (p["jid"], p["retry_count"])
            if ident not in seen:
                seen[ident] = (time.monotonic(), passes)
                stamp = p["failed_at"] if p["retry_count"] == 0 else p["retried_at"]
                delays.append((p["retry_count"], score - stamp))
                locked += int(lock_held(world, p["lock"]))
            elif passes >= seen[ident][1] + 2 and ident not in promoted:
                due.append(member)  # a whole pass ran while it waited: its time has come
                promoted.add(ident)
        if due:
            now = time.time()
            world.redis.zadd(keys.retry, {m: now for m in due}, xx=True)
            last_promotion = time.monotonic()
        time.sleep(0.05)
    heal = time.monotonic() - last_promotion
    f = world.figures()
    bad = [(n, d) for n, d in delays if not n**4 + 15 <= d <= n**4 + 15 + 9 * (n + 1) + SETTLE]
    per_key = sorted(set(f.per_key_performs.values()))
    already = sum(r["already_queued"] for r in world.runs())
    record("10", f"retry storm: {KEYS} keys fail {FAILS}x then recover, passes every 1 s", f,
           heal=f"all done {heal:.1f} s after the last promotion; {len(promoted)} retries driven",
           heal_seconds=heal,
           target="every delay within the backoff; exactly 4 performs per key; lock held",
           notes=f"{len(delays)} retry delays checked, {len(bad)} outside the formula; performs per "
                 f"key {per_key}; {locked}/{len(delays)} retries held their lock; passes reported "
                 f"{already} keys already queued")
    assert len(delays) == KEYS * FAILS
    assert not bad, f"delays outside the backoff: {bad[:5]}"
    assert locked == len(delays), "the uniqueness lock is held through every retry"
    assert per_key == [FAILS + 1], "passes bypassed the backoff (extra performs)"
    assert already > 0
    assert f.lost == 0
    assert f.dup_effects == 0
