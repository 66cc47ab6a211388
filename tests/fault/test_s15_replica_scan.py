"""Scenario 15: passes scan a read replica (``pending_database_url``) that lags.

A standby that has not replayed the primary's latest commits shows keys as pending
that the primary has finished, and does not show keys the primary added. Neither may
cost an effect: every delivery re-checks its key on the primary under the key's lock
(``already_done``), and keys the replica does not show yet are found by a later pass.
The figures: lost 0 (nothing pending on the primary at the end), duplicate effects 0,
and the lag each pass recorded.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from reconcile.broker import Broker, SettleKind, SettleOp, get_broker
from reconcile.config import Settings, use_settings
from reconcile.outcome import Outcome
from reconcile.scheduler.passes import run_pass
from reconcile.store import migrate, runs
from reconcile.store.engine import dispose_engines, get_engine
from reconcile.worker.executor import Executor
from tests.fault import harness
from tests.fault.replica import set_replay_paused, start_standby, wait_caught_up
from tests.fault.results import record
from tests.fault.servers import PgCluster
from tests.reconciled_app import ProcessItem, app_metadata, effects, items


@pytest.fixture
def source() -> Iterator[PgCluster]:
    """A primary of this test's own, not the suite's shared cluster: in a full fault run
    the pass over a standby of the shared cluster found 0 of 1,000 replayed keys in 2 of
    3 runs (never alone, nor in a fresh process 6 of 6): until that is understood, the
    scenario runs on servers no other test has touched."""
    node = PgCluster()
    try:
        node.init()
        node.start()
        node.wait_ready()
        yield node
    finally:
        node.destroy()


@pytest.fixture
def standby(source: PgCluster) -> Iterator[PgCluster]:
    node = start_standby(source)
    try:
        yield node
    finally:
        dispose_engines()
        node.destroy()


def drain(broker: Broker, executor: Executor) -> Counter[str]:
    """Run every queued ``items`` job once, as a worker would; returns the outcomes."""
    outcomes: Counter[str] = Counter()
    ops: list[SettleOp] = []
    while True:
        got = broker.exchange("replica-test", [ProcessItem.queue], 100, ops)
        if not got:
            return outcomes
        ops = [executor.run(d) for d in got]
        outcomes.update({k: v for k, v in executor.take_counts().items() if v})
        outcomes["performed"] += sum(1 for op in ops if op.kind is SettleKind.ACK)


def test_a_pass_over_a_lagging_replica_loses_and_doubles_nothing(
    source: PgCluster, standby: PgCluster, settings: Settings,
) -> None:
    db = "replica_" + uuid.uuid4().hex[:8]
    source.create_database(db)
    wait_caught_up(source, standby)
    s = settings.with_overrides(database_url=source.url(db), pending_database_url=standby.url(db))
    use_settings(s)
    migrate.upgrade(s.database_url)
    primary = get_engine(s)
    app_metadata.create_all(primary)
    with primary.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, 1001)])
    wait_caught_up(source, standby)
    broker = get_broker(s)
    executor = Executor(s, broker)

    # caught up: the replica shows what the primary shows
    first = run_pass(ProcessItem, settings=s)
    assert (first.found, first.enqueued, first.replica_lag) == (1000, 1000, 0.0), first

    # the replica stops replaying; the primary finishes 400 keys elsewhere, adds 200
    set_replay_paused(standby, True)
    with primary.begin() as c:
        c.execute(items.update().where(items.c.id <= 400).values(done=True))
        c.execute(items.insert(), [{"id": i} for i in range(1001, 1201)])
    out = drain(broker, executor)
    assert (out["performed"], out[Outcome.ALREADY_DONE]) == (600, 400)

    # a pass over the stale replica: all 1,000 old keys look pending, the new ones absent
    stale = run_pass(ProcessItem, settings=s)
    assert stale.found == 1000 and stale.replica_lag is not None and stale.replica_lag > 0
    out = drain(broker, executor)
    assert (out["performed"], out[Outcome.ALREADY_DONE]) == (0, 1000)

    # replay resumes: the next pass finds the 200 new keys
    set_replay_paused(standby, False)
    wait_caught_up(source, standby)
    healed_at = time.monotonic()
    last = run_pass(ProcessItem, settings=s)
    assert (last.found, last.enqueued, last.replica_lag) == (200, 200, 0.0)
    out = drain(broker, executor)
    assert out["performed"] == 200
    healed = time.monotonic() - healed_at

    with primary.connect() as c:
        still_pending = c.execute(sa.select(sa.func.count()).where(items.c.done.is_(False))).scalar_one()
        per_item = Counter(dict(c.execute(
            sa.select(effects.c.item_id, sa.func.count()).group_by(effects.c.item_id)).all()))
    assert still_pending == 0
    assert sorted(per_item) == [*range(401, 1201)]
    dup_effects = sum(n - 1 for n in per_item.values() if n > 1)
    assert dup_effects == 0
    recorded = [r.replica_lag_ms for r in runs.recent_runs(primary, job=ProcessItem.job_name)]
    assert recorded[0] == 0 and recorded[1] is not None and recorded[1] > 0 and recorded[2] == 0

    record("15", "passes scan a read replica whose replay is paused: 400 keys done and 200 added "
           "on the primary meanwhile",
           harness.Figures(keys_due=1200, done=1200, lost=still_pending, dup_effects=dup_effects,
                           performs=800, deliveries=2200, dup_exec=0),
           f"stale pass: 1,000 keys delivered, all already_done (replica lag {stale.replica_lag:.2f} s "
           f"recorded); new keys found by the first pass after replay resumed, done {healed:.2f} s later",
           "no effect from a stale key; keys not yet replicated found by a later pass",
           notes="each delivery re-checks its key on the primary under the key's lock, so the scan "
                 "may read a lagging replica")
