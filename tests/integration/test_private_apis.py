"""The SQLAlchemy and psycopg internals reconcile relies on, checked where an upgrade would break them.

Each internal is used through one shim (``reconcile/store/_sqlalchemy_private.py``,
``reconcile/store/_psycopg_private.py``). These tests fail loudly, naming the internal,
when a new version renames it, changes its signature or changes what it does: first
the attributes and parameters, then the behaviour each shim promises, on the real
PostgreSQL.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import pq
from sqlalchemy.engine import Connection
from sqlalchemy.sql.cache_key import CacheKey
from sqlalchemy.sql.compiler import SQLCompiler

from reconcile.store import _psycopg_private as pg_private
from reconcile.store import _sqlalchemy_private as sa_private
from reconcile.store.key_check import compile_key_check

things = sa.table("things", sa.column("id", sa.BigInteger), sa.column("kind", sa.Text))


def pending(kind: str) -> sa.Select[Any]:
    return sa.select(things.c.id).where(things.c.kind == kind)


def parameters(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


# -- SQLAlchemy: the names and signatures --------------------------------------------


def test_sqlalchemy_handle_dbapi_exception_takes_error_statement_parameters_cursor_context() -> None:
    assert parameters(Connection._handle_dbapi_exception)[:6] == [
        "self", "e", "statement", "parameters", "cursor", "context"], \
        "Connection._handle_dbapi_exception changed: update reconcile/store/_sqlalchemy_private.py"


def test_sqlalchemy_construct_params_takes_extracted_parameters_and_escape_names() -> None:
    names = parameters(SQLCompiler.construct_params)
    assert names[:2] == ["self", "params"]
    assert "extracted_parameters" in names and "escape_names" in names, \
        "SQLCompiler.construct_params changed: update reconcile/store/_sqlalchemy_private.py"


def test_sqlalchemy_generate_cache_key_gives_key_and_bindparams() -> None:
    assert hasattr(sa.sql.ClauseElement, "_generate_cache_key")
    assert CacheKey._fields[:2] == ("key", "bindparams")
    # 2.1 added "params" (values of Select.params()); 2.0 has none: given_params covers both
    assert CacheKey._fields[2:3] in ((), ("params",))


def test_values_given_with_select_params_reach_the_check_on_either_version() -> None:
    stmt = sa.select(things.c.id).where(things.c.kind == sa.bindparam("kind", "a")).params(kind="z")
    values = sa_private.cache_key(stmt)
    assert values is not None
    given = {**{b.key: b.value for b in values.bindparams}, **sa_private.given_params(values)}
    assert given["kind"] == "z"


# -- SQLAlchemy: the behaviour -------------------------------------------------------


def test_cache_key_is_the_structure_and_carries_each_calls_values() -> None:
    a, b = sa_private.cache_key(pending("a")), sa_private.cache_key(pending("b"))
    assert a is not None and b is not None
    assert a.key == b.key, "same structure, same key"
    assert [p.value for p in a.bindparams] == ["a"] and [p.value for p in b.bindparams] == ["b"]
    assert sa_private.cache_key(pending("a").where(things.c.id > 1)).key != a.key  # type: ignore[union-attr]


def test_construct_params_takes_another_calls_values_into_a_compiled_statement() -> None:
    dialect = sa.create_engine("postgresql+psycopg://").dialect
    stmt = pending("a")
    first = sa_private.cache_key(stmt)  # of the statement compiled: its values are matched
    assert first is not None
    check = compile_key_check(stmt, dialect, first)
    later = sa_private.cache_key(pending("b"))
    assert later is not None
    params = sa_private.construct_params(check.compiled, {"reconcile_key_0": 7}, later.bindparams)
    assert params["reconcile_key_0"] == 7
    assert "b" in params.values() and "a" not in params.values()


@pytest.fixture
def conn(database_url: str) -> Iterator[Connection]:
    engine = sa.create_engine(database_url)
    with engine.connect() as c:
        yield c
    engine.dispose()


def test_raise_dbapi_error_wraps_a_driver_error_as_sqlalchemy_would(conn: Connection) -> None:
    driver: Any = conn.connection.driver_connection
    cursor = driver.cursor()
    handled: list[BaseException] = []
    sa.event.listen(conn.engine, "handle_error", lambda ctx: handled.append(ctx.original_exception))
    try:
        cursor.execute("SELECT 1 / 0")
    except psycopg.Error as exc:
        with pytest.raises(sa.exc.DataError) as raised:
            sa_private.raise_dbapi_error(conn, exc, "SELECT 1 / 0", (), cursor)
        assert raised.value.orig is exc and raised.value.statement == "SELECT 1 / 0"
        assert handled == [exc], "handle_error listeners see it"
    else:
        pytest.fail("the driver did not raise")
    assert not conn.invalidated


def test_raise_dbapi_error_invalidates_a_lost_connection(conn: Connection, database_url: str) -> None:
    driver: Any = conn.connection.driver_connection
    pid = driver.info.backend_pid
    with sa.create_engine(database_url).connect() as other:
        other.execute(sa.select(sa.func.pg_terminate_backend(pid)))
    cursor = driver.cursor()
    try:
        cursor.execute("SELECT 1")
    except psycopg.Error as exc:
        with pytest.raises(sa.exc.OperationalError) as raised:
            sa_private.raise_dbapi_error(conn, exc, "SELECT 1", (), cursor)
        assert raised.value.connection_invalidated
    else:
        pytest.fail("a terminated backend answered")
    assert conn.invalidated


# -- psycopg ---------------------------------------------------------------------------


def test_psycopg_pgconn_exec_and_error_from_result_exist() -> None:
    assert hasattr(pq.PGconn, "exec_") or hasattr(psycopg.Connection, "pgconn")
    assert parameters(psycopg.errors.error_from_result)[:2] == ["result", "encoding"], \
        "psycopg.errors.error_from_result changed: update reconcile/store/_psycopg_private.py"
    for name in ("IDLE", "INTRANS", "INERROR"):
        assert hasattr(pq.TransactionStatus, name)
    assert hasattr(pq.ExecStatus, "FATAL_ERROR") and hasattr(pq.ConnStatus, "BAD")


@pytest.fixture
def driver(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    url = sa.engine.make_url(database_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as c:
        yield c


def test_exec_simple_sends_several_statements_and_returns_the_last_result(
    driver: psycopg.Connection[Any]
) -> None:
    result = pg_private.exec_simple(driver, b"BEGIN; SELECT 41 + 1", "utf-8")
    assert result.get_value(0, 0) == b"42"
    assert driver.info.transaction_status == pq.TransactionStatus.INTRANS, "psycopg sees libpq's state"
    pg_private.exec_simple(driver, b"ROLLBACK", "utf-8")
    assert driver.info.transaction_status == pg_private.IDLE


def test_exec_simple_raises_errors_as_psycopg_does(driver: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.DivisionByZero):
        pg_private.exec_simple(driver, b"SELECT 1 / 0", "utf-8")
    pid = driver.info.backend_pid
    with psycopg.connect(driver.info.dsn, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError):
        pg_private.exec_simple(driver, b"SELECT 1", "utf-8")


def test_ping_answers_none_on_a_live_connection_and_a_reason_on_a_closed_one(
    driver: psycopg.Connection[Any]
) -> None:
    assert pg_private.ping(driver) is None
    assert driver.info.transaction_status == pg_private.IDLE, "the ping opened no transaction"
    driver.close()
    assert pg_private.ping(driver)


def test_sqlalchemy_compiler_attributes_the_key_check_reads_exist() -> None:
    """compile_key_check decides from these whether a compiled string can stand for
    the check (public attributes, but undocumented in part)."""
    compiled = pending("a").compile(dialect=sa.create_engine("postgresql+psycopg://").dialect)
    for name in ("bind_names", "positional", "post_compile_params", "escaped_bind_names", "string"):
        assert hasattr(compiled, name), f"SQLCompiler.{name} is gone: update reconcile/store/key_check.py"
