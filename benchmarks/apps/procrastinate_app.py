"""procrastinate's app and task for the "reconciled" drain (PostgreSQL only, no Redis).

``BENCH_PQ_CONNINFO`` is the libpq URL of the bench database with ``search_path`` set
to procrastinate's schema (see :mod:`benchmarks.pg`); ``BENCH_PQ_CONCURRENCY`` sizes
the pools. The task does what reconcile's ``bench.ProcessItem`` does, in one
transaction of its own: insert an effect row and mark the item done.
"""

from __future__ import annotations

import asyncio
import os

import psycopg
import psycopg_pool
from procrastinate import App, PsycopgConnector

from .. import probe

CONNINFO = os.environ["BENCH_PQ_CONNINFO"]  # set by the adapter (driver) and for its workers
CONCURRENCY = int(os.environ.get("BENCH_PQ_CONCURRENCY", "8"))

# procrastinate's own pool: fetch_job / finish_job of every running job, the listener
# and the heartbeat share it, so it is sized above the concurrency (the default pool
# of 4 connections would serialise them).
AUTOCOMMIT = os.environ.get("BENCH_PQ_AUTOCOMMIT", "0") == "1"


async def _autocommit(conn: psycopg.AsyncConnection) -> None:
    await conn.set_autocommit(True)


app = App(connector=PsycopgConnector(conninfo=CONNINFO, min_size=CONCURRENCY + 2,
                                     max_size=CONCURRENCY + 2,
                                     **({"configure": _autocommit} if AUTOCOMMIT else {})))

_pool: psycopg_pool.AsyncConnectionPool | None = None
_pool_lock = asyncio.Lock()


async def _effects_pool() -> psycopg_pool.AsyncConnectionPool:
    """The task's own connections (one per concurrent job), opened on first use."""
    global _pool
    if _pool is None:
        async with _pool_lock:
            if _pool is None:
                pool = psycopg_pool.AsyncConnectionPool(CONNINFO, min_size=CONCURRENCY,
                                                        max_size=CONCURRENCY, open=False)
                await pool.open(wait=True)
                _pool = pool
    return _pool


@app.task(name="bench.process_item", queue="rdrain")
async def process_item(item_id: int) -> None:
    pool = _pool or await _effects_pool()
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("INSERT INTO effects (item_id) VALUES (%s)", (item_id,))
        await conn.execute("UPDATE items SET done = true WHERE id = %s", (item_id,))
        probe.hit()
