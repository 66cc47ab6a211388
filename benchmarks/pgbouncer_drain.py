"""The reconciled drain through PgBouncer (transaction pooling) against direct: jobs/s.

``python -m benchmarks.pgbouncer_drain [--keys 5000] [--rounds 3] [-c 8]``

Uses the machine's PostgreSQL (``DATABASE_URL``, default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``: a database ``bench_pgb`` is
created beside it) and Redis (``REDIS_URL``, a namespace of its own, removed after),
and starts a private ``pgbouncer`` (``pool_mode = transaction``, 20 server connections,
:mod:`tests.fault.pgbouncer`) in front of that PostgreSQL. Each round seeds ``--keys``
pending items, enqueues them with one pass, and drains them with one ``reconcile worker``
process (``-c``), directly and through PgBouncer in alternating order. The rate is
keys over the span between the first and the last effect row (``clock_timestamp()``
written by each perform), so the worker's start-up is not counted.

This module is also the worker's ``--app``: :class:`PgbItem` is the drain's job of the
"reconciled" benchmark section (an INSERT and an UPDATE per key), without the probe.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from reconcile import ReconciledJob

meta = sa.MetaData()
items = sa.Table("pgb_items", meta, sa.Column("id", sa.BigInteger, primary_key=True),
                 sa.Column("done", sa.Boolean, nullable=False))
effects = sa.Table("pgb_effects", meta, sa.Column("item_id", sa.BigInteger, nullable=False),
                   sa.Column("at", sa.DateTime(timezone=True), nullable=False,
                             server_default=sa.func.clock_timestamp()))
LOG_EFFECT = effects.insert().values(item_id=sa.bindparam("item_id"))
MARK_DONE = items.update().where(items.c.id == sa.bindparam("item_id")).values(done=True)
DB = "bench_pgb"


class PgbItem(ReconciledJob):
    name = "bench.PgbItem"
    queue = "pgbdrain"
    every = 3600  # passes are started by the driver

    def pending(self) -> Select[Any]:
        return sa.select(items.c.id).where(sa.not_(items.c.done))

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        params = {"item_id": item_id}
        session.execute(LOG_EFFECT, params)
        session.execute(MARK_DONE, params)


class _Server:
    """The machine's PostgreSQL as :class:`tests.fault.pgbouncer.PgBouncer` reads it."""

    def __init__(self, port: int, user: str) -> None:
        self.port, self.user = port, user


def _drain(url: str, redis_url: str, keys: int, concurrency: int, pooler: str) -> float:
    from reconcile.config import load_settings, use_settings
    from reconcile.scheduler.passes import run_pass
    from reconcile.store.engine import dispose_engines

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"prepare_threshold": None})
    with engine.begin() as c:
        c.execute(sa.text("TRUNCATE pgb_items, pgb_effects"))
        c.execute(sa.text("INSERT INTO pgb_items SELECT g, false FROM generate_series(1, :n) g"), {"n": keys})
        c.execute(sa.text("ANALYZE pgb_items"))
    namespace = "pgbbench" + uuid.uuid4().hex[:8]
    settings = load_settings({"database_url": url, "redis_url": redis_url, "namespace": namespace,
                              "database_pooler": pooler}, env={}, pyproject=False)
    use_settings(settings)
    run_pass(PgbItem, settings=settings)
    dispose_engines()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE_")}
    env.update(RECONCILE_DATABASE_URL=url, RECONCILE_REDIS_URL=redis_url,
               RECONCILE_NAMESPACE=namespace, RECONCILE_DATABASE_POOLER=pooler,
               RECONCILE_LOG_LEVEL="WARNING")
    worker = subprocess.Popen(
        [sys.executable, "-m", "reconcile", "worker", "--app", "benchmarks.pgbouncer_drain",
         "-q", "pgbdrain", "-c", str(concurrency)],
        cwd=Path(__file__).resolve().parents[1], env=env)
    try:
        deadline = time.monotonic() + 600
        while True:
            with engine.connect() as c:
                left = c.execute(sa.text("SELECT count(*) FROM pgb_items WHERE NOT done")).scalar()
            if left == 0:
                break
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"drain did not finish ({left} left)")
            time.sleep(0.2)
        with engine.connect() as c:
            n, span = c.execute(sa.text(
                "SELECT count(*), extract(epoch FROM max(at) - min(at)) FROM pgb_effects")).one()
    finally:
        worker.terminate()
        worker.wait(30)
        import redis

        r = redis.Redis.from_url(redis_url)
        for key in r.scan_iter(match=f"{{{namespace}}}*", count=1000):
            r.delete(key)
        r.close()
        engine.dispose()
    return float(n) / float(span)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-c", "--concurrency", type=int, default=8)
    opts = ap.parse_args()
    base = os.environ.get("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    admin_url = sa.engine.make_url(base)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as c:
        if not c.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": DB}).scalar():
            c.execute(sa.text(f'CREATE DATABASE "{DB}"'))
    admin.dispose()
    direct = admin_url.set(database=DB)
    from reconcile.store import migrate
    from tests.fault.pgbouncer import PgBouncer

    migrate.upgrade(direct.render_as_string(hide_password=False))
    bench = sa.create_engine(direct)
    meta.create_all(bench)
    bench.dispose()
    bouncer = PgBouncer(_Server(direct.port or 5432, direct.username or "postgres"),  # type: ignore[arg-type]
                        pool_mode="transaction", pool_size=20)
    bouncer.start()
    rates: dict[str, list[float]] = {"direct": [], "pgbouncer": []}
    try:
        for r in range(opts.rounds):
            order = ["direct", "pgbouncer"] if r % 2 == 0 else ["pgbouncer", "direct"]
            for mode in order:
                url = (direct.render_as_string(hide_password=False) if mode == "direct"
                       else bouncer.url(DB))
                rate = _drain(url, redis_url, opts.keys, opts.concurrency,
                              "none" if mode == "direct" else "transaction")
                rates[mode].append(rate)
                print(f"round {r + 1} {mode:9s} {rate:8.0f} jobs/s", flush=True)
    finally:
        bouncer.destroy()
    d, p = statistics.median(rates["direct"]), statistics.median(rates["pgbouncer"])
    print(f"median direct {d:.0f} jobs/s, through PgBouncer {p:.0f} jobs/s: ratio {p / d:.2f} "
          f"({opts.keys} keys, -c {opts.concurrency}, {opts.rounds} interleaved rounds)")


if __name__ == "__main__":
    main()
