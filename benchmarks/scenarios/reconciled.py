"""The "reconciled" section: PostgreSQL is the truth (reconcile and procrastinate only).

Two measurements, on the same PostgreSQL server, in a throwaway database of the run
(:mod:`benchmarks.pg`, dropped at the end):

* **Reconcile pass** (reconcile only). ``pass_items`` holds ``Sizes.pass_rows`` pending
  rows (1,000,000 by default; ``generate_series``, a partial index ``(id) WHERE NOT
  done`` for the pending query's keyset pages), seeded once per run. Each round, with
  reconcile's Redis database empty, ``run_pass(PassItem)`` runs twice in the driver:
  the first pass enqueues every key, the second finds every key already queued
  (uniqueness locks held). Keys/s = rows found / wall time of ``run_pass``. The
  Redis database is flushed afterwards.
* **Reconciled drain** (both). ``items`` holds N pending rows; every job, in ONE
  transaction, inserts an ``effects`` row and marks its item done. reconcile: the keys
  are enqueued by one pass, then ``reconcile worker`` processes run the ReconciledJob
  protocol (advisory lock, re-check, perform, re-check, commit, ack). procrastinate:
  the jobs are deferred beforehand with ``batch_defer_async`` (1000 per call), then
  ``procrastinate worker`` processes run an async task doing the same two statements in
  one transaction of its own. 1 and 2 worker processes; jobs/s from the first job
  started to the last job finished, both taken inside the workers by
  :mod:`benchmarks.probe` (the probe's ``hit()`` is the last statement inside each
  job's transaction, for both). After each drain the table is checked: N items done,
  N effect rows, no item with two effects.

N is ``Sizes.rdrain``, the same for every system; the workers start behind the start
gate and the clock starts when it opens, as in the Redis drain
(:mod:`benchmarks.scenarios.drain`).
"""

from __future__ import annotations

import time

from .. import pg
from ..common import flush_db
from ..systems import System
from .base import Context, Metric
from .drain import run_workers

PASS1 = Metric("pass1", "pass, first: all enqueued", "keys/s", True)
PASS2 = Metric("pass2", "pass, second: all already queued", "keys/s", True)
RDRAIN1 = Metric("rdrain1", "reconciled drain, 1 process", "jobs/s", True)
RDRAIN2 = Metric("rdrain2", "reconciled drain, 2 processes", "jobs/s", True)
SETTLE_TIMEOUT = 15.0  # seconds for the last commits to become visible after the probe count


class Reconciled:
    name = "reconciled"
    section = "reconciled"
    metrics: tuple[Metric, ...] = (PASS1, PASS2, RDRAIN1, RDRAIN2)
    implemented = True

    def __init__(self) -> None:
        self.prepared: set[str] = set()
        self.pass_seeded: dict[str, int] = {}  # system -> pass rows seeded

    def skip_reason(self, system: System, metric: Metric) -> str | None:
        if not system.pg_schema:
            return "PostgreSQL section"
        if system.family != "reconcile" and metric in (PASS1, PASS2):
            return "no reconcile pass"
        return None

    def run(self, system: System, ctx: Context) -> dict[str, float]:
        pg.DATABASE.ensure()
        if system.name not in self.prepared:
            system.pg_prepare()
            self.prepared.add(system.name)
        out: dict[str, float] = {}
        if system.family == "reconcile":
            out.update(self._passes(system, ctx))
        out[RDRAIN1.key] = self._drain(system, ctx, 1)
        out[RDRAIN2.key] = self._drain(system, ctx, 2)
        return out

    def close(self) -> None:
        """End of the run: drop the bench database."""
        self.prepared.clear()
        self.pass_seeded.clear()
        pg.DATABASE.drop()

    # -- the pass ------------------------------------------------------------------------

    def _passes(self, system: System, ctx: Context) -> dict[str, float]:
        n = ctx.sizes.pass_rows
        if self.pass_seeded.get(system.name) != n:
            t = time.monotonic()
            system.seed_pass(n)
            self.pass_seeded[system.name] = n
            ctx.say(f"  {system.name}: seeded {n:,} pending rows in {time.monotonic() - t:.1f}s")
        out: dict[str, float] = {}
        system.flush()
        try:
            for metric, want in ((PASS1, "enqueued"), (PASS2, "already_queued")):
                dt, result = system.timed_pass()
                if result["error"] or result["found"] != n or result[want] != n:
                    raise RuntimeError(f"{metric.label}: expected {n} {want}: {result['summary']}")
                out[metric.key] = n / dt
        finally:
            flush_db(system.db, asynchronous=True)  # a million jobs and locks
        return out

    # -- the drain -----------------------------------------------------------------------

    def _drain(self, system: System, ctx: Context, procs: int) -> float:
        n = ctx.sizes.rdrain
        system.pg_prefill(n)
        try:
            rate = run_workers(f"{system.name}-reconciled", system.pg_worker_commands(procs),
                               system.pg_worker_env(), n, ctx, system.pg_worker_preload,
                               system.expected_modules())
            self._check(system, n)
            return rate
        finally:
            system.flush()

    @staticmethod
    def _check(system: System, n: int) -> None:
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            done, effects, dup = system.pg_state()
            if done >= n and effects >= n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{system.name}: {done}/{n} items done, {effects} effects after the drain")
            time.sleep(0.1)
        if effects != n or dup:
            raise RuntimeError(f"{system.name}: {effects} effect rows for {n} items ({dup} duplicated)")


SCENARIO = Reconciled()
