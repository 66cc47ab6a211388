"""Scenario 13: a Redis Sentinel group fails over under the oracle workload.

A private group (:class:`tests.fault.sentinel.SentinelGroup`: 1 primary, 1 replica, 3
Sentinels, ``down-after-milliseconds`` 2000, all private ``redis-server`` processes with
``--save ""``); the scheduler, two workers and two of the three client processes
(:mod:`tests.fault.enqueuer`) all use the group's ``redis+sentinel://`` URL. Mid-run:

* 13a -- ``SENTINEL FAILOVER`` (planned: the replica is promoted, the old primary keeps
  taking writes until the Sentinels demote it, about 10 s later);
* 13b -- SIGKILL of the primary (the Sentinels see it down after 2 s and elect the
  replica; the killed node is then started again as a replica of the new primary).

Asserted for the ReconciledJob oracle: lost 0, duplicate effects 0, the failover seen as
an INCIDENT by the scheduler. Reported: time to heal (failover to every key done), the
INCIDENT lines, and plain jobs (:class:`~tests.fault.oracle_app.PlainOracle`) enqueued
one by one during the run by a client with ``enqueue_replicas = 0`` and one with
``enqueue_replicas = 1``: how many enqueues were acknowledged and never ran (lost with
the old primary). Without WAIT that figure is only reported; with WAIT it must be 0
(an enqueue is acknowledged only once the replica that gets promoted has it).

The control: a third client is given the first primary's own ``redis://`` URL, as every
process had to be before ``redis+sentinel://``. It must meet ``READONLY`` once that
server is demoted (the failure the issue reported: every such process failing until
restarted), and its acknowledged jobs written there after the promotion are lost.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconcile import config
from tests.fault.harness import ROOT, SOAK, World, db_now, loss_pass_done
from tests.fault.results import record
from tests.fault.sentinel import SentinelGroup
from tests.fault.servers import PgCluster

KEYS = 6_000 if SOAK else 2_000
DOWN_AFTER_MS = 2000
"""``down-after-milliseconds`` of the Sentinels. At 1000 ms, on the 2-core machine under
load, a just-promoted primary was taken for down within a second in two of about ten
runs of 13b, and the group failed over a second time (once back to the killed node,
restarted empty: see ``SentinelGroup.restart_as_replica``)."""
INCIDENT = re.compile(r"INCIDENT: Redis failover")


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    g = SentinelGroup(tmp_path / "sentinel", down_after_ms=DOWN_AFTER_MS, failover_timeout_ms=5000)
    try:
        g.start()
        yield g
    finally:
        g.stop()


@pytest.fixture
def sworld(pg_cluster: PgCluster, group: SentinelGroup, tmp_path: Path) -> Iterator[World]:
    previous = config._current
    world = World(pg_cluster, group.primary(), tmp_path / "world", redis_url=group.url())
    try:
        world.upgrade()
        yield world
    finally:
        world.close()
        config._current = previous


@dataclass
class Enqueuer:
    popen: subprocess.Popen[bytes]
    log: Path
    prefix: str
    replicas: int


def _enqueuer(world: World, prefix: str, replicas: int, stop: Path, redis_url: str | None = None) -> Enqueuer:
    log = world.folder / f"enqueued-{prefix}.log"
    env = world.env("fault-client", RECONCILE_ENQUEUE_REPLICAS=replicas,
                    RECONCILE_ENQUEUE_REPLICAS_TIMEOUT="0.5", FAULT_ENQUEUE_PAUSE="0.01",
                    RECONCILE_REDIS_URL=redis_url or world.redis_url)
    with open(world.folder / f"enqueuer-{prefix}.out", "ab") as out:
        popen = subprocess.Popen([sys.executable, "-m", "tests.fault.enqueuer", str(log), prefix, str(stop)],
                                 cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Enqueuer(popen, log, prefix, replicas)


def _plain_figures(world: World, e: Enqueuer) -> dict[str, int]:
    answered: Counter[str] = Counter()
    acked: set[str] = set()
    for line in e.log.read_text().splitlines():
        kind, _, token = line.partition(" ")
        answered[kind] += 1
        if kind == "E":
            acked.add(token)
    ran: Counter[str] = Counter()
    for (kind, token), n in world.attempts().items():
        if kind == "J" and token.startswith(e.prefix):
            ran[token] += n
    return {"acknowledged": len(acked), "not_replicated": answered["R"], "readonly": answered["O"],
            "errors": answered["X"],
            "lost": len(acked - set(ran)), "ran_twice": sum(1 for n in ran.values() if n > 1)}


def _acked(e: Enqueuer) -> int:
    return e.log.read_text().count("E ")


def _scheduler_log(world: World) -> str:
    return "".join(p.tail(10_000_000) for p in world.procs if p.kind == "scheduler")


def _run(world: World, group: SentinelGroup, fault: Callable[[], int], scenario: str, title: str,
         target: str, restart_old: bool = False) -> dict[str, Any]:
    """``fault()`` fails the primary over and returns its port. ``restart_old``: the
    killed old primary is started again once the replica is promoted, as its replica
    (empty: no persistence, so never as a primary, see ``restart_as_replica``)."""
    world.seed(KEYS)
    world.scheduler(FAULT_EVERY=10)
    for _ in range(2):
        world.worker("-q", "plain", concurrency=6)
    stop = world.folder / "stop-enqueuers"
    # the control: a client given the first primary's own redis:// URL, as every process
    # was before redis+sentinel:// existed
    clients = [_enqueuer(world, "n", 0, stop), _enqueuer(world, "w", 1, stop),
               _enqueuer(world, "p", 0, stop, redis_url=group.primary().url)]
    world.wait(lambda: world.done() >= KEYS * 0.3, 120, "30% done")
    left = world.pending()
    since = db_now(world)
    t0 = time.monotonic()
    old_port = fault()
    new = group.wait_promoted(old_port, timeout=30)
    promoted = time.monotonic() - t0
    old = next(n for n in group.nodes if n.port == old_port)
    if restart_old:
        group.restart_as_replica(old, new)
    # from the fault (a restart of the old node counts in: it may finish after the pass)
    world.wait(lambda: loss_pass_done(world, since), 30, "a redis_loss pass after the failover")
    requeued = time.monotonic() - t0
    world.wait(lambda: world.pending() == 0, 60, "every key done after the failover")
    heal = time.monotonic() - t0
    # the Sentinels demote the old primary (about 10 s after SENTINEL FAILOVER), which
    # the control client then meets as READONLY; the clients go on enqueuing on the new
    # primary (20 more acknowledged), then stop; every plain job still queued runs
    # before the figures are taken
    settled = group.wait_settled(timeout=40)
    demoted = time.monotonic() - t0
    failovers = group.failovers()
    if settled is not old:  # the control's server is a replica now (not after a failover back)
        world.wait(lambda: "O " in clients[2].log.read_text(), 30, "the control client to meet READONLY")
    acked = _acked(clients[0])
    world.wait(lambda: _acked(clients[0]) >= acked + 20, 30, "enqueues acknowledged by the new primary")
    stop.touch()
    for c in clients:
        c.popen.wait(30)
    world.wait(lambda: world.queued("plain") == 0, 30, "every plain job run")
    f = world.figures()
    incidents = len(INCIDENT.findall(_scheduler_log(world)))
    all_incidents = _scheduler_log(world).count("INCIDENT")
    without, with_wait, direct = (_plain_figures(world, c) for c in clients)
    row = record(
        scenario, f"{title} with {left:,} of {KEYS:,} keys pending (1 primary, 1 replica, 3 Sentinels)", f,
        heal=(f"new primary elected {promoted:.1f} s after the fault, ReconciledJob work re-enqueued "
              f"{requeued:.1f} s, all done {heal:.1f} s (group settled {demoted:.1f} s)"),
        heal_seconds=heal, target=target,
        notes=(f"{failovers} failover(s) by the Sentinels, {all_incidents} INCIDENT line(s) "
               f"({incidents} naming a failover); plain jobs "
               f"enqueued one by one during the run: enqueue_replicas = 0: {without['acknowledged']:,} "
               f"acknowledged, {without['lost']:,} of them lost with the old primary; "
               f"enqueue_replicas = 1: {with_wait['acknowledged']:,} acknowledged, "
               f"{with_wait['lost']} lost, {with_wait['not_replicated']:,} refused with NotReplicated "
               f"(and {with_wait['errors'] + without['errors']} enqueue errors while no primary answered); "
               f"{without['ran_twice'] + with_wait['ran_twice']} plain jobs ran twice (at-least-once). "
               f"Control, a client with the first primary's redis:// URL: {direct['acknowledged']:,} "
               f"acknowledged, {direct['lost']:,} of them lost, then {direct['readonly']:,} READONLY "
               f"and {direct['errors']:,} other errors until it stopped"),
        promoted_seconds=promoted, requeued_seconds=requeued, settled_seconds=demoted, failovers=failovers,
        incidents=all_incidents,
        plain_without_wait=without, plain_with_wait=with_wait, plain_direct_url=direct,
        new_primary_port=new.port)
    assert f.lost == 0
    assert f.dup_effects == 0
    assert incidents >= 1, _scheduler_log(world)[-3000:]
    assert with_wait["lost"] == 0, with_wait
    assert with_wait["acknowledged"] > 0 and without["acknowledged"] > 0
    if settled is not old:
        assert direct["readonly"] > 0  # the control: what a client without Sentinel meets
    return row


def test_sentinel_failover_mid_run(sworld: World, group: SentinelGroup) -> None:
    def failover() -> int:
        port = group.primary_port()
        group.failover()
        return port

    _run(sworld, group, failover, "13a", "SENTINEL FAILOVER mid-run",
         target="lost 0, duplicate effects 0; the failover is an INCIDENT and the work is "
                "re-enqueued within a few seconds of the promotion")


def test_sigkill_of_the_sentinel_primary_mid_run(sworld: World, group: SentinelGroup) -> None:
    def kill() -> int:
        return group.kill_primary().port

    _run(sworld, group, kill, "13b", "SIGKILL of the Sentinel group's primary mid-run",
         target="lost 0, duplicate effects 0; promotion after down-after-milliseconds (2 s) "
                "plus the election, then as 13a", restart_old=True)
