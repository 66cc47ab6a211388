"""reconcile itself (and, with ``--against``, the code of another commit: ``reconcile_ref``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .. import pg
from ..common import DBS, python, url
from .base import System, arg_after, timed_loop

CONCURRENCY = 10
PG_CONCURRENCY = int(os.environ.get("BENCH_RC_PG_CONCURRENCY", "16"))
"""Worker threads of the reconciled drain (each job holds a PostgreSQL connection)."""


class Reconcile(System):
    name = "reconcile"
    package = "reconcile-jobs"  # the distribution name (the import package is reconcile)
    family = "reconcile"
    bulk_api = "perform_bulk"
    pg_schema = pg.RC_SCHEMA
    config = (f"reconcile worker --app benchmarks.jobs -q default -c {CONCURRENCY} "
              "--namespace bench --log-level WARNING (prefetch default = concurrency)")
    pg_config = (f"reconcile worker --app benchmarks.reconciled_jobs -q rdrain -c {PG_CONCURRENCY} "
                 "--database-url <bench db, search_path=bench_rc> --namespace bench "
                 "--log-level WARNING (prefetch default = concurrency; SQLAlchemy pool "
                 "concurrency + 2); keys enqueued by one run_pass (jitter 0)")
    worker_preload = ("reconcile.cli", "reconcile.startup", "reconcile.worker", "reconcile.store.engine",
                      "benchmarks.jobs")
    # the store's delivery modules and the SQLAlchemy dialect load at the first delivery
    pg_worker_preload = ("reconcile.cli", "reconcile.startup", "reconcile.worker", "reconcile.store.engine",
                         "reconcile.store.pending", "reconcile.store.switches",
                         "sqlalchemy.dialects.postgresql.psycopg", "benchmarks.reconciled_jobs")

    def __init__(self, db: int | None = None, schema: str | None = None) -> None:
        """``db`` and ``schema``: another Redis database and PostgreSQL schema than
        reconcile's own (the agent of ``reconcile@<ref>`` runs this adapter with its own)."""
        self._db = DBS[self.name] if db is None else db
        if schema is not None:
            self.pg_schema = schema

    @property
    def db(self) -> int:
        return self._db

    def open(self) -> None:
        from reconcile.config import use_settings

        from .. import jobs
        from ..apps.reconcile_worker import settings_for

        self.settings = settings_for(database_url=pg.sa_url(self.pg_schema), db=self.db)
        use_settings(self.settings)
        self.jobs = jobs

    def expected_modules(self) -> dict[str, Path]:
        import reconcile

        return {"reconcile": Path(reconcile.__file__).parent}

    def urls(self) -> list[tuple[str, str]]:
        return [("driver: settings.redis_url", str(self.settings.redis_url)),
                ("driver: settings.database_url", str(self.settings.database_url)),
                ("worker: --redis-url", arg_after(self.worker_command(), "--redis-url")),
                ("reconciled worker: --redis-url", arg_after(self.pg_worker_command(), "--redis-url")),
                ("reconciled worker: --database-url",
                 arg_after(self.pg_worker_command(), "--database-url"))]

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
        return [python(), "-m", "reconcile", "worker", "--app", "benchmarks.jobs",
                "-q", "default", "-c", str(CONCURRENCY), "--redis-url", url(self.db),
                "--namespace", "bench", "--log-level", "WARNING", *extra]

    # -- the reconciled section ------------------------------------------------------

    def pg_prepare(self) -> None:
        from reconcile.store import migrate

        from .. import reconciled_jobs  # noqa: F401  (registers the job classes)

        migrate.upgrade(pg.sa_url(self.pg_schema))  # reconcile's tables, as `reconcile db upgrade`
        pg.create_items(pg.DATABASE.engine(self.pg_schema))

    def pg_prefill(self, n: int) -> None:
        from reconcile.scheduler.passes import run_pass

        from ..reconciled_jobs import ProcessItem

        pg.seed_items(pg.DATABASE.engine(self.pg_schema), n)
        self.flush()
        result = run_pass(ProcessItem, settings=self.settings)
        if result.error or result.enqueued != n:
            raise RuntimeError(f"prefill pass: {result.summary()}")

    def pg_state(self) -> tuple[int, int, int]:
        return pg.items_state(pg.DATABASE.engine(self.pg_schema))

    def seed_pass(self, n: int) -> None:
        """``pass_items`` with n pending rows, for :meth:`timed_pass`."""
        pg.seed_pass_items(pg.DATABASE.engine(self.pg_schema), n)

    def timed_pass(self) -> tuple[float, dict[str, Any]]:
        """One ``run_pass(PassItem)``: (wall seconds, the result's counts and summary)."""
        from reconcile.scheduler.passes import run_pass

        from ..reconciled_jobs import PassItem

        t = time.perf_counter()
        result = run_pass(PassItem, trigger="manual", owner="bench", settings=self.settings)
        dt = time.perf_counter() - t
        return dt, {"found": result.found, "enqueued": result.enqueued,
                    "already_queued": result.already_queued, "error": result.error,
                    "summary": result.summary()}

    def pg_worker_command(self) -> list[str]:
        extra = os.environ.get("BENCH_RC_PG_ARGS", "").split()  # for tuning experiments
        return [python(), "-m", "reconcile", "worker", "--app", "benchmarks.reconciled_jobs",
                "-q", "rdrain", "-c", str(PG_CONCURRENCY), "--redis-url", url(self.db),
                "--database-url", pg.sa_url(self.pg_schema), "--namespace", "bench",
                "--log-level", "WARNING", *extra]
