"""reconcile itself."""

from __future__ import annotations

import os
import time

from .. import pg
from ..common import DBS, python, url
from .base import System, timed_loop

CONCURRENCY = 10
PG_CONCURRENCY = int(os.environ.get("BENCH_RC_PG_CONCURRENCY", "16"))
"""Worker threads of the reconciled drain (each job holds a PostgreSQL connection)."""


def _cli_has_worker() -> bool:
    try:
        from reconcile import cli
    except ImportError:
        return False
    return hasattr(cli, "worker")


class Reconcile(System):
    name = "reconcile"
    package = "reconcile"
    drain_share = 4.0
    bulk_api = "perform_bulk"
    config = (f"reconcile worker --app benchmarks.jobs -q default -c {CONCURRENCY} "
              "--namespace bench --log-level WARNING (prefetch default = concurrency)")
    # 12,000 jobs: a drain of about 8 s, as long as procrastinate's 3,000. A second
    # worker process starts its first job about 0.3 s after the first process (its
    # imports compete with 16 busy threads for the two cores), which weighs less in a
    # longer window
    rdrain_share = 2.0
    pg_config = (f"reconcile worker --app benchmarks.reconciled_jobs -q rdrain -c {PG_CONCURRENCY} "
                 "--database-url <bench db, search_path=bench_rc> --namespace bench "
                 "--log-level WARNING (prefetch default = concurrency; SQLAlchemy pool "
                 "concurrency + 2); keys enqueued by one run_pass (jitter 0)")

    def open(self) -> None:
        from reconcile.config import use_settings

        from .. import jobs
        from ..apps.reconcile_worker import settings_for

        self.settings = settings_for(database_url=pg.sa_url(pg.RC_SCHEMA))
        use_settings(self.settings)
        self.jobs = jobs

    def close(self) -> None:
        from reconcile.store.engine import dispose_engines

        dispose_engines()  # before the bench database is dropped

    def enqueue_single(self, n: int) -> float:
        return timed_loop(n, self.jobs.Noop.perform_async)

    def enqueue_bulk(self, n: int) -> float:
        args = [(i,) for i in range(n)]
        t = time.perf_counter()
        self.jobs.Noop.perform_bulk(args)
        return time.perf_counter() - t

    def send_latency(self) -> None:
        self.jobs.Latency.perform_async(time.time())

    def worker_command(self) -> list[str]:
        extra = os.environ.get("BENCH_RECONCILE_ARGS", "").split()  # for tuning experiments
        if not _cli_has_worker():  # fallback while the CLI lacks the command
            return [python(), "-m", "benchmarks.apps.reconcile_worker",
                    "-c", str(CONCURRENCY), *extra]
        return [python(), "-m", "reconcile", "worker", "--app", "benchmarks.jobs",
                "-q", "default", "-c", str(CONCURRENCY), "--redis-url", url(DBS["reconcile"]),
                "--namespace", "bench", "--log-level", "WARNING", *extra]

    # -- the reconciled section ------------------------------------------------------

    def pg_prepare(self) -> None:
        from reconcile.store import migrate

        from .. import reconciled_jobs  # noqa: F401  (registers the job classes)

        migrate.upgrade(pg.sa_url(pg.RC_SCHEMA))  # reconcile's tables, as `reconcile db upgrade`
        pg.create_items(pg.DATABASE.engine(pg.RC_SCHEMA))

    def pg_prefill(self, n: int) -> None:
        from reconcile.scheduler.passes import run_pass

        from ..reconciled_jobs import ProcessItem

        pg.seed_items(pg.DATABASE.engine(pg.RC_SCHEMA), n)
        self.flush()
        result = run_pass(ProcessItem, settings=self.settings)
        if result.error or result.enqueued != n:
            raise RuntimeError(f"prefill pass: {result.summary()}")

    def pg_state(self) -> tuple[int, int, int]:
        return pg.items_state(pg.DATABASE.engine(pg.RC_SCHEMA))

    def pg_worker_command(self) -> list[str]:
        extra = os.environ.get("BENCH_RC_PG_ARGS", "").split()  # for tuning experiments
        return [python(), "-m", "reconcile", "worker", "--app", "benchmarks.reconciled_jobs",
                "-q", "rdrain", "-c", str(PG_CONCURRENCY), "--redis-url", url(DBS["reconcile"]),
                "--database-url", pg.sa_url(pg.RC_SCHEMA), "--namespace", "bench",
                "--log-level", "WARNING", *extra]
