"""Scenario 17: two schedulers share a partitioned pass; one is SIGKILLed mid-pass.

The oracle class runs with ``partitions = 4`` (pages of 50 keys, so a partition's pass
over its quarter of the keys takes long enough to be caught running) and two
``reconcile scheduler`` processes, each running one partition of the class at a time
(so they share the four rows). Once both have run partition passes, a scheduler
holding a running partition pass is frozen (SIGSTOP), checked to still hold it, and
SIGKILLed: its claim stays in PostgreSQL with nobody refreshing it, and its run record
keeps ``finished_at`` NULL. The survivor takes the dead claim over
``pass_stale_seconds`` (4 s here) later and from then on runs every partition.
Asserted: nothing lost, no duplicate effect, the dead scheduler's partition rescanned
by the survivor, no partition ever run by both at once. Reported: how the partitions
were split between the two before the kill, and the times to heal.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections import Counter
from typing import Any

import sqlalchemy as sa

from tests.fault.harness import SOAK, Proc, World, db_now
from tests.fault.results import record

KEYS = 40_000 if SOAK else 12_000
PARTITIONS = 4
EVERY = 2.0
STALE = 4.0
MAX_TRIES = 50


def running_claims(world: World) -> list[tuple[str, str]]:
    with world.engine.connect() as c:
        return [(r.name, r.running_owner) for r in c.execute(sa.text(
            "SELECT name, running_owner FROM reconcile_schedules WHERE running_owner IS NOT NULL"))]


def kill_mid_pass(world: World, scheds: list[Proc]) -> tuple[Proc, str, str, int]:
    """SIGKILL a scheduler while it holds a running partition pass: stop it, check that
    it still holds the claim (a pass may end between reading the claim and the stop),
    then kill it. Returns the process, its owner id, the row it held and the tries."""
    for attempt in range(1, MAX_TRIES + 1):
        name, owner = world.wait(lambda: next(iter(running_claims(world)), None), 60,
                                 "a scheduler running a partition pass", interval=0.002)
        pid = int(owner.split(":")[-2])
        proc = next(p for p in scheds if p.pid == pid)
        os.kill(pid, signal.SIGSTOP)
        if (name, owner) in running_claims(world):
            proc.expect_alive = False
            os.kill(pid, signal.SIGKILL)
            proc.popen.wait(10)
            return proc, owner, name, attempt
        os.kill(pid, signal.SIGCONT)
    raise AssertionError(f"no scheduler was caught mid-pass in {MAX_TRIES} tries")


def label(run: dict[str, Any]) -> int:
    return int(run["partition_index"])


def test_two_schedulers_share_partitions_and_one_is_killed_mid_pass(world: World) -> None:
    world.seed(KEYS)
    env = dict(FAULT_EVERY=EVERY, FAULT_PARTITIONS=PARTITIONS, FAULT_BATCH=50,
               RECONCILE_PASS_STALE_SECONDS=STALE)
    scheds = [world.scheduler(**env) for _ in range(2)]
    world.worker(concurrency=4)
    # a few rounds first, so the split between the two schedulers shows
    world.wait(lambda: len({r["scheduler"] for r in world.runs()}) == 2 and len(world.runs()) >= 8,
               60, "both schedulers running partition passes, two rounds of them")
    victim, owner, held, tries = kill_mid_pass(world, scheds)
    killed_at = db_now(world)
    survivor = next(p for p in scheds if p is not victim)
    before = [r for r in world.runs() if r["started_at"] < killed_at]
    split = {who: sorted(Counter(label(r) for r in before if r["scheduler"] == who).items())
             for who in {r["scheduler"] for r in before}}

    def rescanned() -> bool:
        # every partition, the dead one's too, completed by the survivor after the kill
        after = [r for r in world.runs() if r["started_at"] > killed_at and r["finished_at"]
                 and r["error"] is None]
        return {label(r) for r in after} == set(range(PARTITIONS))

    t_rescan = world.timed(rescanned, 60, "every partition rescanned after the kill")
    t_done = world.timed(lambda: world.pending() == 0, 180, "every key done") + t_rescan
    world.check_procs()
    runs = world.runs()
    dead_runs = [r for r in runs if r["scheduler"] == owner and r["finished_at"] is None]
    after = [r for r in runs if r["started_at"] > killed_at]
    # no partition ran twice at once (a takeover only after the dead claim went stale)
    overlaps = []
    for i in range(PARTITIONS):
        mine = sorted((r for r in runs if label(r) == i and r["scheduler"] != owner),
                      key=lambda r: r["started_at"])
        overlaps += [(a["id"], b["id"]) for a, b in itertools.pairwise(mine)
                     if a["finished_at"] and b["started_at"] < a["finished_at"]]
    f = world.figures()
    split_text = "; ".join(f"scheduler {i + 1}: " + ", ".join(f"#{p} x{n}" for p, n in parts)
                           for i, (_, parts) in enumerate(sorted(split.items())))
    record("17", f"2 schedulers share a {PARTITIONS}-partition pass, one SIGKILLed mid-pass", f,
           heal=f"every partition rescanned {t_rescan:.2f} s after the kill "
                f"(pass_stale_seconds {STALE:.0f}); all keys done {t_done:.2f} s after it",
           heal_seconds=t_rescan,
           target=f"lost 0, duplicate effects 0; the dead claim taken over after "
                  f"pass_stale_seconds ({STALE:.0f} s) + a tick",
           notes=f"{KEYS} keys, pages of 50; before the kill, partition passes per scheduler: "
                 f"{split_text}; killed holding row {held} (try {tries}); "
                 f"{len(after)} passes by the survivor after the kill",
           partitions_split=split)
    assert dead_runs, "the killed scheduler left no unfinished run: it was not caught mid-pass"
    assert not overlaps, f"a partition ran twice at once: {overlaps}"
    assert len(split) == 2, f"the two schedulers did not share the partitions: {split}"
    assert all(r["scheduler"].split(":")[-2] == str(survivor.pid) for r in after)
    assert survivor.alive()
    assert f.lost == 0
    assert f.dup_effects == 0
