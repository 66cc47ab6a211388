"""Raw psycopg: the drain job's transaction with no job system (the reconciled floor)."""

from __future__ import annotations

import os

from .. import pg
from ..common import python
from .base import System

THREADS = int(os.environ.get("BENCH_RAW_PG_THREADS", "8"))


class RawPsycopg(System):
    name = "psycopg"
    package = "psycopg"
    uses_redis = False
    runs_workers = False
    pg_schema = pg.RAW_SCHEMA
    pg_worker_preload = ("benchmarks.apps.raw_pg_worker",)
    no_bulk_reason = "PostgreSQL-only: reconciled section only"
    config = "PostgreSQL-only (reconciled section)"
    pg_config = (f"python -m benchmarks.apps.raw_pg_worker -t {THREADS} --part K/P: {THREADS} threads a "
                 "process, one psycopg connection each, item ids split between the processes; "
                 "no queue, just BEGIN / INSERT / UPDATE / COMMIT per item (in the bench_raw schema)")

    def open(self) -> None:
        import psycopg  # noqa: F401

    def urls(self) -> list[tuple[str, str]]:
        return [("worker: BENCH_PQ_CONNINFO", self.pg_worker_env()["BENCH_PQ_CONNINFO"])]

    def enqueue_single(self, n: int) -> float:
        raise NotImplementedError("raw psycopg runs in the reconciled section only")

    def pg_prepare(self) -> None:
        pg.create_items(pg.DATABASE.engine(self.pg_schema))

    def pg_prefill(self, n: int) -> None:
        self.n = n
        pg.seed_items(pg.DATABASE.engine(self.pg_schema), n)

    def pg_state(self) -> tuple[int, int, int]:
        return pg.items_state(pg.DATABASE.engine(self.pg_schema))

    def pg_worker_commands(self, procs: int) -> list[list[str]]:
        return [[python(), "-m", "benchmarks.apps.raw_pg_worker", "-t", str(THREADS),
                 "--part", f"{k}/{procs}", "-n", str(self.n)] for k in range(procs)]

    def pg_worker_env(self) -> dict[str, str]:
        return {"BENCH_PQ_CONNINFO": pg.conninfo(self.pg_schema)}
