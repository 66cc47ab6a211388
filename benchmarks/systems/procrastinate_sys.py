"""procrastinate: a PostgreSQL-only job queue, the peer of the reconciled section.

It takes no part in the Redis scenarios. Its jobs are deferred beforehand with
``batch_defer_async`` (one INSERT of 1000 jobs per call), then its worker drains them.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from .. import pg
from ..common import tool
from .base import System

CONCURRENCY = int(os.environ.get("BENCH_PQ_CONCURRENCY", "8"))
DELETE_JOBS = os.environ.get("BENCH_PQ_DELETE_JOBS", "never")
DEFER_BATCH = 1000


class Procrastinate(System):
    name = "procrastinate"
    package = "procrastinate"
    uses_redis = False
    pg_schema = pg.PQ_SCHEMA
    pg_worker_preload = ("benchmarks.apps.procrastinate_app", "procrastinate.worker")
    no_bulk_reason = "PostgreSQL-only: reconciled section only"
    config = "PostgreSQL-only (reconciled section)"
    pg_config = (f"procrastinate --app benchmarks.apps.procrastinate_app.app --log-level warning "
                 f"worker --queues rdrain --concurrency {CONCURRENCY} --delete-jobs {DELETE_JOBS} "
                 f"(listen_notify on, the default); PsycopgConnector pool {CONCURRENCY + 2} "
                 f"connections, the async task's own psycopg pool {CONCURRENCY}; jobs deferred "
                 f"with batch_defer_async, {DEFER_BATCH} per call")

    def open(self) -> None:
        os.environ["BENCH_PQ_CONNINFO"] = pg.conninfo(self.pg_schema)
        import procrastinate  # noqa: F401  (ImportError: reported as missing)

        self.loop = asyncio.new_event_loop()
        self.app: Any = None

    def urls(self) -> list[tuple[str, str]]:
        from ..apps import procrastinate_app

        connector = procrastinate_app.app.connector
        return [("driver: App connector conninfo",
                 str(connector._pool_args["conninfo"])),  # private, no public accessor
                ("driver: task's effects pool", procrastinate_app.CONNINFO),
                ("worker: BENCH_PQ_CONNINFO", self.pg_worker_env()["BENCH_PQ_CONNINFO"])]

    def _app(self) -> Any:
        if self.app is None:
            from ..apps import procrastinate_app

            self.module = procrastinate_app
            self.app = procrastinate_app.app
            self.loop.run_until_complete(self.app.open_async())
        return self.app

    def close(self) -> None:
        if self.app is not None:
            self.loop.run_until_complete(self.app.close_async())
            self.app = None
        self.loop.close()

    def enqueue_single(self, n: int) -> float:
        raise NotImplementedError("procrastinate runs in the reconciled section only")

    # -- the reconciled section ------------------------------------------------------

    def pg_prepare(self) -> None:
        app = self._app()
        self.loop.run_until_complete(app.schema_manager.apply_schema_async())
        pg.create_items(pg.DATABASE.engine(self.pg_schema))

    def pg_prefill(self, n: int) -> None:
        import sqlalchemy as sa

        engine = pg.DATABASE.engine(self.pg_schema)
        with engine.begin() as c:
            c.execute(sa.text("TRUNCATE procrastinate_jobs, procrastinate_workers RESTART IDENTITY CASCADE"))
        pg.seed_items(engine, n)
        task = self.module.process_item

        async def go() -> None:
            for s in range(1, n + 1, DEFER_BATCH):
                await task.batch_defer_async(*({"item_id": i} for i in range(s, min(n + 1, s + DEFER_BATCH))))

        self._app()
        self.loop.run_until_complete(go())
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(sa.text("VACUUM ANALYZE procrastinate_jobs"))

    def pg_state(self) -> tuple[int, int, int]:
        return pg.items_state(pg.DATABASE.engine(self.pg_schema))

    def pg_worker_command(self) -> list[str]:
        return [tool("procrastinate"), "--app", "benchmarks.apps.procrastinate_app.app",
                "--log-level", "warning", "worker", "--queues", "rdrain",
                "--concurrency", str(CONCURRENCY), "--delete-jobs", DELETE_JOBS]

    def pg_worker_env(self) -> dict[str, str]:
        return {"BENCH_PQ_CONNINFO": pg.conninfo(self.pg_schema), "BENCH_PQ_CONCURRENCY": str(CONCURRENCY),
                "BENCH_PQ_AUTOCOMMIT": os.environ.get("BENCH_PQ_AUTOCOMMIT", "0")}
