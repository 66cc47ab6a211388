"""The PostgreSQL side of the "reconciled" section: one throwaway database per run.

``BENCH_DATABASE`` names the server and the database to connect to first (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``). The run creates its own
database ``reconcile_bench_<pid>`` on that server, lazily (only when a reconciled
measurement runs), with one schema per system, and drops it at the end:

* ``bench_rc``: reconcile's framework tables (``reconcile db upgrade``, i.e. alembic),
  the drain's ``items`` / ``effects`` and the pass's ``pass_items``;
* ``bench_pq``: procrastinate's schema and its own ``items`` / ``effects``;
* ``bench_raw``: ``items`` / ``effects`` of the raw psycopg floor;
* ``bench_rc_ref``: as ``bench_rc``, for reconcile at another commit (``--against``).

Each system reaches its schema through ``search_path`` in its connection URL, exactly
as an application that keeps its tables in a schema would.
"""

from __future__ import annotations

import contextlib
import os
import time
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

BASE_URL = os.environ.get("BENCH_DATABASE", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DB_NAME = os.environ.get("BENCH_DB_NAME") or f"reconcile_bench_{os.getpid()}"
"""The run's database; ``BENCH_DB_NAME`` is set for the agent of ``--against`` only."""
RC_SCHEMA = "bench_rc"
PQ_SCHEMA = "bench_pq"
RAW_SCHEMA = "bench_raw"
REF_SCHEMA = "bench_rc_ref"  # reconcile at another commit (--against)
SCHEMAS = (RC_SCHEMA, PQ_SCHEMA, RAW_SCHEMA, REF_SCHEMA)


def sa_url(schema: str) -> str:
    """SQLAlchemy URL of the bench database with ``schema`` first on the search_path."""
    u = make_url(BASE_URL).set(drivername="postgresql+psycopg", database=DB_NAME)
    rendered = u.render_as_string(hide_password=False)
    sep = "&" if "?" in rendered else "?"
    return f"{rendered}{sep}options={quote(f'-csearch_path={schema}')}"


def conninfo(schema: str) -> str:
    """libpq URL (for psycopg / procrastinate) of the bench database, schema first."""
    return sa_url(schema).replace("postgresql+psycopg://", "postgresql://", 1)


def _admin() -> Engine:
    return sa.create_engine(BASE_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


class BenchDatabase:
    """Created on first use, dropped by :meth:`drop` (the driver calls it at the end)."""

    def __init__(self) -> None:
        self.created = False
        self._engines: dict[str, Engine] = {}

    def ensure(self) -> None:
        if self.created:
            return
        with _admin().connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
            c.execute(sa.text(f'CREATE DATABASE "{DB_NAME}"'))
        self.created = True
        with self.engine(RC_SCHEMA).begin() as c:
            for schema in SCHEMAS:
                c.execute(sa.text(f"CREATE SCHEMA {schema}"))

    def engine(self, schema: str) -> Engine:
        eng = self._engines.get(schema)
        if eng is None:
            eng = self._engines[schema] = sa.create_engine(sa_url(schema), pool_size=2)
        return eng

    def drop(self) -> None:
        for eng in self._engines.values():
            eng.dispose()
        self._engines.clear()
        if not self.created:
            return
        for attempt in range(5):
            try:
                with _admin().connect() as c:
                    c.execute(sa.text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
                break
            except sa.exc.OperationalError:
                if attempt == 4:
                    raise
                time.sleep(1)
        self.created = False


DATABASE = BenchDatabase()


# -- the application tables ------------------------------------------------------------

def create_items(engine: Engine) -> None:
    """``items`` (what needs work) and ``effects`` (one row per performed job; no unique
    constraint, so a duplicate effect would show as a second row)."""
    with engine.begin() as c:
        c.execute(sa.text("DROP TABLE IF EXISTS items, effects"))
        c.execute(sa.text("CREATE TABLE items (id bigint PRIMARY KEY, done boolean NOT NULL DEFAULT false)"))
        c.execute(sa.text("CREATE INDEX items_pending ON items (id) WHERE NOT done"))
        c.execute(sa.text("CREATE TABLE effects (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                          "item_id bigint NOT NULL)"))


def seed_items(engine: Engine, n: int) -> None:
    """Reset ``items`` to ``n`` pending rows and empty ``effects``."""
    with engine.begin() as c:
        c.execute(sa.text("TRUNCATE items, effects"))
        c.execute(sa.text("INSERT INTO items (id) SELECT g FROM generate_series(1, :n) g"), {"n": n})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(sa.text("VACUUM ANALYZE items"))


def items_state(engine: Engine) -> tuple[int, int, int]:
    """(items done, effect rows, items with more than one effect)."""
    with engine.connect() as c:
        done = c.execute(sa.text("SELECT count(*) FROM items WHERE done")).scalar_one()
        effects = c.execute(sa.text("SELECT count(*) FROM effects")).scalar_one()
        dup = c.execute(sa.text(
            "SELECT count(*) FROM (SELECT item_id FROM effects GROUP BY item_id HAVING count(*) > 1) d"
        )).scalar_one()
    return int(done), int(effects), int(dup)


def seed_pass_items(engine: Engine, n: int) -> None:
    """``pass_items``: n pending rows for the pass, with the partial index its pending
    query pages through (``WHERE NOT done ORDER BY id``)."""
    with engine.begin() as c:
        c.execute(sa.text("DROP TABLE IF EXISTS pass_items"))
        c.execute(sa.text("CREATE TABLE pass_items (id bigint PRIMARY KEY, "
                          "done boolean NOT NULL DEFAULT false)"))
        c.execute(sa.text("INSERT INTO pass_items (id) SELECT g FROM generate_series(1, :n) g"), {"n": n})
        c.execute(sa.text("CREATE INDEX pass_items_pending ON pass_items (id) WHERE NOT done"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(sa.text("VACUUM ANALYZE pass_items"))


def drop_pass_items(engine: Engine) -> None:
    with contextlib.suppress(sa.exc.DBAPIError), engine.begin() as c:
        c.execute(sa.text("DROP TABLE IF EXISTS pass_items"))
