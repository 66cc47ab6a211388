"""Client CPU per ReconciledJob delivery, in process (a before/after check for changes
on the delivery path).

``python -m benchmarks.delivery_cpu [timeout]``: 6 runs of 3,000 ``execute()`` calls
of a one-UPDATE job on the fast path, directly on ``DATABASE_URL`` (default the local
``test`` database, in a schema of its own, dropped after), inside one executor
thread's held connection as a worker runs them; prints the client CPU time
(``time.process_time``) per delivery of each run and the best. ``timeout``: the job
has a ``timeout``, so the watchdog's backend is read each delivery. Run it from two
checkouts alternately (``PYTHONPATH=<other checkout>``) to compare; CPU time is less
sensitive than wall time to a PostgreSQL shared with other work.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from reconcile import ReconciledJob
from reconcile.config import load_settings, use_settings
from reconcile.store.engine import dispose_engines, holding_connections

N = 3000
TIMED = sys.argv[1:] == ["timeout"]
meta = sa.MetaData()
items = sa.Table("mb_items", meta, sa.Column("id", sa.BigInteger, primary_key=True),
                 sa.Column("done", sa.Boolean, nullable=False))
MARK = items.update().where(items.c.id == sa.bindparam("k")).values(done=True)


class Item(ReconciledJob):
    name = "bench.MicroItem" + ("Timed" if TIMED else "")
    every = 3600
    timeout = 60 if TIMED else None

    def pending(self) -> Select[Any]:
        return sa.select(items.c.id).where(sa.not_(items.c.done))

    def perform(self, session: Session, k: int) -> None:  # type: ignore[override]
        session.execute(MARK, {"k": k})


def main() -> None:
    base = os.environ.get("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    schema = "mb" + uuid.uuid4().hex[:8]
    admin = sa.create_engine(base)
    with admin.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = f"{base}?options={quote(f'-csearch_path={schema}')}"
    engine = sa.create_engine(url)
    try:
        from reconcile.store import migrate

        migrate.upgrade(url)  # the kill switches are read from reconcile's tables
        meta.create_all(engine)
        with engine.begin() as c:
            c.execute(sa.text("INSERT INTO mb_items SELECT g, false FROM generate_series(1, :n) g"),
                      {"n": N * 6})
        use_settings(load_settings({"database_url": url}, env={}, pyproject=False))
        runs: list[float] = []
        key = 0
        with holding_connections():
            for _ in range(6):
                t0 = time.process_time()
                for _ in range(N):
                    key += 1
                    assert Item().execute([key]) == "done"
                runs.append((time.process_time() - t0) / N * 1e6)
        print(f"{'timeout' if TIMED else 'plain'}: client CPU us/delivery "
              f"runs={[round(r) for r in runs]} best={min(runs):.0f}")
    finally:
        dispose_engines()
        engine.dispose()
        with admin.begin() as c:
            c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


if __name__ == "__main__":
    main()
