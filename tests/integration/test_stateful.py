"""Scenario 11 of issue 4: a hypothesis state machine over the whole ReconciledJob loop.

In-process, against the real Redis (the test's namespace) and PostgreSQL (the test's
schema), hypothesis interleaves:

* row changes: new keys become due; any key becomes due again (its generation is
  bumped: ``st_items.gen``; see ``tests/stateful_app.py``);
* enqueues with ``perform_async`` (uniqueness lock taken), lock-free duplicates
  (``set(unique_for=0)``) and delayed ones (``perform_in``: the scheduled set);
* Redis flushes (``Broker.flush_namespace``);
* worker crashes at three points: before perform (leased, never run), inside perform
  (the transaction rolls back; repeated, the job is a poison pill), after perform and
  commit but before the ack (the settlement never reaches Redis). The crashed
  process's lease expires (its alive key is deleted, it stays in the procs set) and
  the reaper runs now or at a later step; ``max_recoveries`` is 1 here;
* a live worker that leases, runs and settles in separate steps (so a flush, a pass
  or a crash can fall between its lease, its commit and its ack), or all in one step;
* a worker step whose keys' advisory locks are held by "another worker" (lock busy);
* promotion of the scheduled and retry sets (optionally moving their scores to now);
* scheduler ticks (``run_pass``).

The job fails on the first attempt of every third key, so retries happen.

Checked after every step: no (key, generation) has more than one effect row (the
effect table has no unique constraint; rows are written in the job's transaction),
and every completed generation has its effect. At the end of each example the system
is driven to quiescence (reap, promote, pass, drain, bounded); keys quarantined as
poison pills (recovered from crashed workers more than ``max_recoveries`` times) are
released and the system quiesces again; then every key's final generation must be
done exactly once: lost = 0, duplicate effects = 0. Duplicate executions (attempts
beyond the first per generation, counted outside the transaction) are allowed and
reported with the other figures in one summary line.

``RECONCILE_STATEFUL_EXAMPLES`` / ``RECONCILE_STATEFUL_STEPS`` raise the budget for
a soak run (defaults 25 and 30). Engine defects the machine found are replayed as
plain, deterministic tests at the end of this file.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, fields

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from reconcile.broker import Broker, Delivery, SettleKind, SettleOp, get_broker
from reconcile.config import Settings, use_settings
from reconcile.scheduler.passes import run_pass
from reconcile.store import pending as pending_sql
from reconcile.store import quarantine
from reconcile.store.engine import dispose_engines, get_engine
from reconcile.store.tables import metadata
from reconcile.worker.executor import Executor
from reconcile.worker.maintenance import Maintenance
from tests.stateful_app import SimulatedCrash, StatefulItem, st_effects, st_items, stateful_metadata

QUEUE = StatefulItem.queue
JOB = StatefulItem.job_name
EXAMPLES = int(os.environ.get("RECONCILE_STATEFUL_EXAMPLES", "25"))
STEPS = int(os.environ.get("RECONCILE_STATEFUL_STEPS", "30"))
MAX_KEYS = 24
"""Keys per example at most: more add run time, not interleavings."""
MAX_ROUNDS = 20
"""Quiescence rounds (reap, promote, pass, drain) before an episode counts as stuck."""

picks = st.integers(min_value=0, max_value=63)


@dataclass
class Figures:
    """Totals over every example of the run."""

    examples: int = 0
    keys: int = 0  # distinct keys created
    due: int = 0  # (key, generation) pairs that became due
    final_due: int = 0  # final generations that had to be done at the end of an example
    lost: int = 0
    duplicate_effects: int = 0
    attempts: int = 0
    duplicate_executions: int = 0
    transient_failures: int = 0
    already_done: int = 0
    lock_busy: int = 0
    enqueues: int = 0
    unlocked_duplicates: int = 0
    flushes: int = 0
    crashes: int = 0
    crash_before_perform: int = 0  # deliveries abandoned leased but not run
    crash_inside_perform: int = 0
    crash_after_commit: int = 0  # deliveries abandoned committed but not acked
    recovered: int = 0  # jobs the reaper returned to the queue
    poisoned: int = 0  # keys quarantined as poison pills, released at the end
    passes: int = 0
    max_rounds: int = 0  # most quiescence rounds one example needed

    def add(self, other: Figures) -> None:
        for f in fields(self):
            if f.name == "max_rounds":
                self.max_rounds = max(self.max_rounds, other.max_rounds)
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> str:
        return (
            f"stateful: {self.examples} examples, {self.keys} keys, {self.due} due generations "
            f"({self.final_due} final), lost {self.lost}, duplicate effects {self.duplicate_effects}, "
            f"duplicate executions {self.duplicate_executions} of {self.attempts} attempts "
            f"({self.transient_failures} transient failures), already done {self.already_done}, "
            f"lock busy {self.lock_busy}; injected {self.flushes} flushes, {self.crashes} crashes "
            f"(abandoned {self.crash_before_perform} before perform, {self.crash_inside_perform} "
            f"inside perform, {self.crash_after_commit} after commit before ack), reaper recovered "
            f"{self.recovered}, poison pills quarantined and released {self.poisoned}; "
            f"{self.enqueues} enqueues ({self.unlocked_duplicates} lock-free duplicates), "
            f"{self.passes} passes, at most {self.max_rounds} rounds to quiesce"
        )


class ReconcileMachine(RuleBasedStateMachine):
    """One example = one episode on a fresh world (tables truncated, namespace flushed)."""

    def __init__(self, cfg: Settings, broker: Broker, engine: sa.Engine, total: Figures) -> None:
        super().__init__()
        self.cfg, self.broker, self.engine, self.total = cfg, broker, engine, total
        with engine.begin() as c:
            c.execute(sa.text(
                "TRUNCATE st_items, st_effects, reconcile_quarantine, reconcile_runs RESTART IDENTITY"
            ))
        broker.flush_namespace()
        StatefulItem.attempts.clear()
        StatefulItem.crash_next = False
        self.fig = Figures(examples=1)
        self.executor = Executor(cfg, broker)
        self.maint = Maintenance(cfg, broker)
        self.gens: dict[int, int] = {}  # the model: each key's current generation
        self.next_id = 1
        self.incarnation = 0
        self.proc = self._new_proc()
        self.unrun: list[Delivery] = []  # leased by the live worker, not run yet
        self.parked: list[SettleOp] = []  # run (committed if "A") but not settled yet
        self.dead_procs: set[str] = set()  # crashed, lease expired, not reaped yet

    # -- helpers -----------------------------------------------------------------------

    def _new_proc(self) -> str:
        self.incarnation += 1
        return f"worker-{self.incarnation}"

    def _key(self, pick: int) -> int:
        keys = sorted(self.gens)
        return keys[pick % len(keys)]

    def _lease(self, n: int) -> list[Delivery]:
        return self.broker.exchange(self.proc, [QUEUE], n) if n > 0 else []

    def _run(self, d: Delivery) -> SettleOp:
        op = self.executor.run(d)
        assert op.kind in (SettleKind.ACK, SettleKind.DROP, SettleKind.RETRY, SettleKind.RESCHEDULE), (
            f"unexpected settlement {op.kind.name}: {op.payload!r}")
        if op.kind is SettleKind.RETRY:
            self.fig.transient_failures += 1
            assert b"TransientError" in op.payload, op.payload
        return op

    def _advance_sets(self) -> None:
        """Make every scheduled job and every retry due now (skip the backoff)."""
        r, k = self.broker.redis, self.broker.keys
        now = time.time() - 1
        for zset in (k.schedule, k.retry):
            members = r.zrange(zset, 0, -1)
            if members:
                r.zadd(zset, dict.fromkeys(members, now), xx=True)

    def _reap(self) -> None:
        self.fig.recovered += self.maint.reap_once()
        self.dead_procs.clear()

    def _pass(self) -> int:
        result = run_pass(StatefulItem, trigger="tick", settings=self.cfg)
        assert result.error is None, result.error
        self.fig.passes += 1
        return result.enqueued

    def _die(self, reap_now: bool) -> None:
        """The live worker process dies holding what it holds; a new one takes over."""
        self.fig.crashes += 1
        self.fig.crash_before_perform += len(self.unrun)
        self.fig.crash_after_commit += sum(1 for op in self.parked if op.kind is SettleKind.ACK)
        r, k = self.broker.redis, self.broker.keys
        r.delete(k.alive(self.proc))  # its lease expired
        r.sadd(k.procs, self.proc)  # registered, as its heartbeat had done
        self.dead_procs.add(self.proc)
        self.unrun, self.parked = [], []
        self.proc = self._new_proc()
        if reap_now:
            self._reap()

    def _queued(self) -> bool:
        return bool(self.broker.redis.llen(self.broker.keys.queue(QUEUE)))

    def _sets_busy(self) -> bool:
        r, k = self.broker.redis, self.broker.keys
        return bool(r.zcard(k.schedule) or r.zcard(k.retry))

    def _redis_idle(self) -> bool:
        return not self._queued() and not self._sets_busy()

    def _redis_busy(self) -> bool:
        """Something a flush would lose: queued, scheduled or leased work."""
        return not self._redis_idle() or bool(self.unrun or self.parked or self.dead_procs)

    def _drain(self) -> int:
        """Run everything queued on the live worker; returns how many deliveries ran."""
        ran, ops = 0, list(self.parked) + [self._run(d) for d in self.unrun]
        self.unrun, self.parked = [], []
        while True:
            got = self.broker.exchange(self.proc, [QUEUE], 20, ops)  # settles ops too
            if not got:
                return ran
            ran += len(got)
            assert ran < 10_000, "the queue does not drain"
            ops = [self._run(d) for d in got]

    def _quiesce(self) -> int:
        for rounds in range(1, MAX_ROUNDS + 1):
            self._reap()
            self._advance_sets()
            promoted = self.maint.promote_once()
            enqueued = self._pass()
            ran = self._drain()
            if not (promoted or enqueued or ran) and self._redis_idle():
                return rounds
        pytest.fail(f"no quiescence after {MAX_ROUNDS} rounds")

    # -- rules: rows -----------------------------------------------------------------------

    @precondition(lambda self: len(self.gens) < MAX_KEYS)
    @rule(n=st.integers(1, 4))
    def add_keys(self, n: int) -> None:
        ids = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        with self.engine.begin() as c:
            c.execute(st_items.insert(), [{"id": i} for i in ids])
        self.gens.update(dict.fromkeys(ids, 1))
        self.fig.keys += n
        self.fig.due += n

    @precondition(lambda self: self.gens)
    @rule(pick=picks)
    def due_again(self, pick: int) -> None:
        key = self._key(pick)
        with self.engine.begin() as c:
            c.execute(st_items.update().where(st_items.c.id == key).values(gen=st_items.c.gen + 1))
        self.gens[key] += 1
        self.fig.due += 1

    # -- rules: Redis ----------------------------------------------------------------------

    @precondition(lambda self: self.gens)
    @rule(keys=st.lists(picks, min_size=1, max_size=4),
          how=st.sampled_from(["locked", "unlocked", "delayed"]))
    def enqueue(self, keys: list[int], how: str) -> None:
        for pick in keys:
            key = self._key(pick)
            if how == "locked":
                StatefulItem.perform_async(key)
            elif how == "unlocked":
                StatefulItem.set(unique_for=0).perform_async(key)
                self.fig.unlocked_duplicates += 1
            else:
                StatefulItem.perform_in(30, key)
            self.fig.enqueues += 1

    @precondition(lambda self: self._redis_busy())
    @rule()
    def flush(self) -> None:
        self.broker.flush_namespace()
        self.dead_procs.clear()  # their registrations and leases went with the rest
        self.fig.flushes += 1

    @rule()
    def scheduler_tick(self) -> None:
        self._pass()

    @precondition(lambda self: self._sets_busy())
    @rule(advance=st.booleans())
    def promote(self, advance: bool) -> None:
        if advance:
            self._advance_sets()
        self.maint.promote_once()

    @precondition(lambda self: self.dead_procs)
    @rule()
    def reap(self) -> None:
        self._reap()

    # -- rules: the live worker, one phase at a time or all at once ------------------------

    @precondition(lambda self: self._queued())
    @rule(n=st.integers(1, 4))
    def worker_lease(self, n: int) -> None:
        self.unrun += self._lease(n)

    @precondition(lambda self: self.unrun)
    @rule(n=st.integers(1, 4))
    def worker_run(self, n: int) -> None:
        batch, self.unrun = self.unrun[:n], self.unrun[n:]
        self.parked += [self._run(d) for d in batch]

    @precondition(lambda self: self.parked)
    @rule()
    def worker_settle(self) -> None:
        self.broker.settle(self.proc, self.parked)
        self.parked = []

    @precondition(lambda self: self._queued() or self.unrun or self.parked)
    @rule(n=st.integers(1, 6))
    def worker_step(self, n: int) -> None:
        """Settle what is parked and lease n in one round trip, run all held, settle."""
        got = self.broker.exchange(self.proc, [QUEUE], n, self.parked)
        todo, self.unrun, self.parked = self.unrun + got, [], []
        self.broker.settle(self.proc, [self._run(d) for d in todo])

    @precondition(lambda self: self._queued())
    @rule(n=st.integers(1, 3))
    def contended_step(self, n: int) -> None:
        """Another worker holds the keys' advisory locks: every delivery is re-scheduled."""
        got = self._lease(n)
        with self.engine.connect() as other, other.begin():
            for d in got:
                assert pending_sql.try_key_lock(other, JOB, orjson.loads(d.raw)["args"])
            ops = [self._run(d) for d in got]
        assert [op.kind for op in ops] == [SettleKind.RESCHEDULE] * len(ops)
        self.broker.settle(self.proc, ops)

    # -- rules: crashes ----------------------------------------------------------------------

    @precondition(lambda self: self._queued() or self.unrun or self.parked)
    @rule(after_commit=st.integers(1, 3), before_perform=st.integers(0, 2), reap_now=st.booleans())
    def crash(self, after_commit: int, before_perform: int, reap_now: bool) -> None:
        """Lease and run some (committed, never acked), lease more (never run), die."""
        self.parked += [self._run(d) for d in self._lease(after_commit)]
        self.unrun += self._lease(before_perform)
        self._die(reap_now)

    @precondition(lambda self: self._queued())
    @rule(times=st.integers(1, 3), reap_now=st.booleans())
    def crash_inside_perform(self, times: int, reap_now: bool) -> None:
        """Die inside perform, after the effect row was written (the transaction rolls
        back); ``times`` > 1: the recovered job is leased again and kills the next worker
        too (recovered jobs run next), as a poison pill does."""
        for i in range(times):
            for d in self._lease(1):
                StatefulItem.crash_next = True
                try:
                    self.parked.append(self._run(d))  # not pending any more: perform never ran
                except SimulatedCrash:
                    self.fig.crash_inside_perform += 1
                finally:
                    StatefulItem.crash_next = False
            self._die(reap_now or i < times - 1)

    # -- invariants and the end of an episode -----------------------------------------------

    @invariant()
    def one_effect_per_generation(self) -> None:
        with self.engine.connect() as c:
            dups = c.execute(
                sa.select(st_effects.c.item_id, st_effects.c.gen, sa.func.count())
                .group_by(st_effects.c.item_id, st_effects.c.gen)
                .having(sa.func.count() > 1)
            ).all()
            e = st_effects.alias("e")
            unlogged = c.execute(
                sa.select(st_items.c.id).where(
                    st_items.c.done_gen > 0,
                    ~sa.exists().where(e.c.item_id == st_items.c.id, e.c.gen == st_items.c.done_gen),
                )
            ).all()
        assert not dups, f"duplicate effects (key, gen, rows): {dups}"
        assert not unlogged, f"done without an effect: {unlogged}"

    def teardown(self) -> None:
        StatefulItem.crash_next = False
        if sys.exc_info()[0] is not None:
            return  # a step failed: hypothesis reports that failure, not a follow-up one
        self.fig.max_rounds = self._quiesce()
        entries = quarantine.list_entries(self.engine, JOB)
        assert all(e.error_class == "WorkerCrashed" and "crashed workers" in e.reason for e in entries), [
            (e.key, e.reason, e.error_class, e.error_message, e.payload) for e in entries]
        if entries:
            self.fig.poisoned += len(entries)
            quarantine.release_all(self.engine, JOB)
            self.fig.max_rounds = max(self.fig.max_rounds, self._quiesce())
        assert self.broker.leased_count(self.proc) == 0
        dead = [orjson.loads(raw) for raw, _ in self.broker.set_entries("dead", 0, -1)]
        assert all(d.get("error_class") == "WorkerCrashed" for d in dead), dead

        with self.engine.connect() as c:
            rows = {int(i): (int(g), int(d)) for i, g, d in c.execute(sa.select(st_items))}
            effects = Counter(
                (int(i), int(g)) for i, g in c.execute(sa.select(st_effects.c.item_id, st_effects.c.gen))
            )
        assert {k: g for k, (g, _) in rows.items()} == self.gens, "the model drifted from the table"
        lost = sorted(k for k, g in self.gens.items() if effects[(k, g)] == 0)
        not_done = sorted(k for k, (g, d) in rows.items() if d != g)
        counts = self.executor.take_counts()
        self.fig.final_due = len(self.gens)
        self.fig.lost = len(lost)
        self.fig.duplicate_effects = sum(n - 1 for n in effects.values())
        self.fig.attempts = sum(StatefulItem.attempts.values())
        self.fig.duplicate_executions = sum(n - 1 for n in StatefulItem.attempts.values())
        self.fig.already_done = counts.get("already_done", 0)
        self.fig.lock_busy = counts.get("lock_busy", 0)
        self.total.add(self.fig)
        assert not lost, f"lost keys (final generation never done): {lost}"
        assert not not_done, f"keys still pending: {not_done}"
        assert self.fig.duplicate_effects == 0


@pytest.fixture
def world(pg_settings: Settings) -> Iterator[tuple[Settings, Broker, sa.Engine]]:
    """Settings, broker and engine of the test's namespace and schema, tables created.

    Poison pills after two recoveries (not four), so hypothesis reaches that path often;
    commits do not wait for the WAL flush (no server crash here): about 3x faster."""
    cfg = pg_settings.with_overrides(
        max_recoveries=1,
        database_url=pg_settings.database_url.replace("options=", "options=-csynchronous_commit%3Doff%20"),
    )
    use_settings(cfg)
    engine = get_engine(cfg)
    metadata.create_all(engine)
    stateful_metadata.create_all(engine)
    yield cfg, get_broker(cfg), engine
    dispose_engines()


def test_stateful_reconcile_loses_nothing_and_duplicates_nothing(
    world: tuple[Settings, Broker, sa.Engine],
) -> None:
    cfg, broker, engine = world
    total = Figures()
    started = time.monotonic()
    try:
        run_state_machine_as_test(
            lambda: ReconcileMachine(cfg, broker, engine, total),
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
                print_blob=True,
            ),
        )
    finally:
        print(f"\n{total.summary()} in {time.monotonic() - started:.1f}s")
    record_row(total)
    assert total.lost == 0
    assert total.duplicate_effects == 0
    assert total.examples > 0


def record_row(total: Figures) -> None:
    """Scenario 11's row of docs/reliability.md (see tests/fault/report.py)."""
    from tests.fault import harness
    from tests.fault.results import record

    figures = harness.Figures(
        keys_due=total.due, done=total.due - total.lost, lost=total.lost,
        dup_effects=total.duplicate_effects, performs=total.attempts, deliveries=total.attempts,
        dup_exec=total.duplicate_executions,
    )
    record(
        "11", f"hypothesis state machine: {total.examples} episodes of row changes, enqueues, "
        f"{total.flushes} flushes, {total.crashes} worker crashes, passes, retries",
        figures, f"every episode quiesced within {total.max_rounds} rounds of reap/promote/pass/drain",
        "every key due at the end of an episode done exactly once",
        notes=(f"{total.crash_before_perform} crashes before perform, {total.crash_inside_perform} "
               f"inside, {total.crash_after_commit} after commit before ack; {total.poisoned} poison "
               f"pills quarantined and released; {total.transient_failures} transient failures retried"),
    )


# -- sequences the machine found (or can reach), replayed deterministically -------------------


def test_poison_pill_released_from_quarantine_runs_again(world: tuple[Settings, Broker, sa.Engine]) -> None:
    """The reaper sent a job dead as a poison pill but kept its uniqueness lock: once
    released from quarantine, passes said "already queued" for up to unique_for. And
    the quarantine recorded the error of an earlier retry, not the crashes."""
    m = ReconcileMachine(*world, Figures())
    m.add_keys(3)
    m.enqueue([2], "locked")  # key 3, under its lock
    m.worker_step(1)  # key 3 fails its first attempt: a retry
    m.promote(advance=True)
    m.crash_inside_perform(times=2, reap_now=True)  # recovered once, then dead
    assert (m.fig.transient_failures, m.fig.crash_inside_perform) == (1, 2)
    (entry,) = quarantine.list_entries(m.engine, JOB)
    assert (entry.key, entry.error_class) == ((3,), "WorkerCrashed")
    assert entry.reason == "recovered from crashed workers more than 1 times"
    m.teardown()  # releases the quarantine and quiesces: every key done once
    assert (m.fig.poisoned, m.fig.lost) == (1, 0)


def test_settlement_from_before_a_flush_keeps_new_leases(world: tuple[Settings, Broker, sa.Engine]) -> None:
    """After a flush a process's delivery numbers restarted at 1, so the late ack of a job
    leased before the flush deleted the lease of a new job; when the process then died,
    the reaper could not recover that job and its lock hid the key from passes."""
    m = ReconcileMachine(*world, Figures())
    m.add_keys(2)
    m.enqueue([0], "locked")  # key 1
    m.worker_lease(1)
    m.worker_run(1)  # committed, ack parked
    m.flush()
    m.scheduler_tick()  # key 2 enqueued under its lock
    m.worker_lease(1)
    m.worker_settle()  # the pre-flush ack arrives
    assert m.broker.leased_count(m.proc) == 1, "the new lease survived the old ack"
    m.crash(after_commit=0, before_perform=0, reap_now=True)
    assert m.fig.recovered == 1
    m.teardown()
    assert m.fig.lost == 0
