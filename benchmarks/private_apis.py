"""Micro-measurements of the private-API shims against the public API doing the same.

Run: ``python -m benchmarks.private_apis`` (PostgreSQL at ``BENCH_DATABASE_URL``,
default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``; a temporary table
only). The figures quoted in ``reconcile/store/_sqlalchemy_private.py`` and
``reconcile/store/_psycopg_private.py`` come from it: best of 5 ``timeit`` runs.
"""

from __future__ import annotations

import os
import timeit
from collections.abc import Callable
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import Session

from reconcile.store import _psycopg_private as pg_private
from reconcile.store import _sqlalchemy_private as sa_private
from reconcile.store.key_check import compile_key_check
from reconcile.store.pending import key_check

items = sa.table("items", sa.column("id", sa.BigInteger), sa.column("done", sa.Boolean),
                 sa.column("kind", sa.Text))


def pending() -> sa.Select[Any]:
    return sa.select(items.c.id).where(items.c.done.is_(False))


def pending_bound() -> sa.Select[Any]:
    """A pending query that binds a value of its own (taken from each call)."""
    return sa.select(items.c.id).where(items.c.done.is_(False), items.c.kind == "x")


def measure(label: str, fn: Callable[[], object], n: int = 3000) -> None:
    best = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6
    print(f"{label:72s} {best:8.1f} us")


def main() -> None:
    url = os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    engine = sa.create_engine(url)
    dialect = engine.dialect
    print(f"SQLAlchemy {sa.__version__}, psycopg {psycopg.__version__} ({psycopg.pq.__impl__})")
    measure("pending() alone (building the Select)", pending)
    measure("cache_key(pending())  [shim]", lambda: sa_private.cache_key(pending()))
    measure("key_check(pending(), key).compile()  [public: compile per delivery]",
            lambda: key_check(pending(), [1]).compile(dialect=dialect))
    values = sa_private.cache_key(pending_bound())
    assert values is not None
    check = compile_key_check(pending_bound(), dialect, values)
    measure("construct_params(extracted_parameters=...)  [shim]",
            lambda: sa_private.construct_params(check.compiled, {"reconcile_key_0": 1}, values.bindparams))
    measure("key_check(pending_bound(), key).compile().construct_params()  [public]",
            lambda: key_check(pending_bound(), [1]).compile(dialect=dialect).construct_params())
    first = sa_private.cache_key(pending())
    assert first is not None
    sql = compile_key_check(pending(), dialect, first).sql
    assert sql is not None
    params = {"reconcile_key_0": 1}
    with engine.connect() as conn:
        driver: Any = conn.connection.driver_connection
        cursor = driver.cursor()
        conn.exec_driver_sql("CREATE TEMP TABLE items (id bigint PRIMARY KEY, done bool, kind text)")
        conn.commit()
        driver.autocommit = True
        measure("exec_simple(b'SELECT 1')  [shim: PQexec]",
                lambda: pg_private.exec_simple(driver, b"SELECT 1", "utf-8"))
        measure("cursor.execute('SELECT 1'), fetchone()  [public psycopg]",
                lambda: (cursor.execute("SELECT 1"), cursor.fetchone()))
        driver.autocommit = False
        conn.rollback()
        measure("key check on the driver cursor  [what raise_dbapi_error makes safe]",
                lambda: (cursor.execute(sql, params), cursor.fetchone()))
        measure("key check through Connection.exec_driver_sql  [public]",
                lambda: conn.exec_driver_sql(sql, params).scalar())
        with Session(bind=conn) as session:
            measure("Session.execute(key_check(pending(), key)).scalar()  [reference path]",
                    lambda: session.execute(key_check(pending(), [1])).scalar())
        conn.rollback()
    engine.dispose()


if __name__ == "__main__":
    main()
