"""The three SQLAlchemy internals reconcile uses, and nothing else of SQLAlchemy's private API.

Every use goes through a function here, so an upgrade that changes one of them breaks
one module, and ``tests/test_private_apis.py`` says which (signature and attribute
checks, plus a behavioural check of each). Tested on SQLAlchemy 2.1 (the range
``pyproject.toml`` states); each function says what it saves, measured with
``timeit`` on one warm connection (see the figures below), and which public API would
do the same more slowly. With ``fast_paths = false`` none of them is called on a
delivery: the reference path uses public API only (:mod:`reconcile.store.delivery`).

Figures (SQLAlchemy 2.1.9, psycopg 3.3.9, CPython 3.12, one idle core):

* :func:`cache_key`: 6-8 us per ``pending()`` call of a one-table query; it lets a
  delivery reuse the check compiled for the class instead of compiling
  ``key_check(pending(), key)`` again, which costs 150-190 us (compile) and 120-150 us
  more to run it through ``Session.execute`` than on the driver cursor;
* :func:`construct_params`: 3-4 us; the public way to get the current call's values
  is to compile the statement again (the 150 us above);
* :func:`raise_dbapi_error`: only on a failed statement, so it costs nothing on the
  hot path; what it saves is running the protocol's statements on the driver cursor
  at all (``Connection.exec_driver_sql`` costs 35-45 us more per statement than the
  cursor) while errors still arrive wrapped and lost connections invalidated, as if
  SQLAlchemy had run them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, cast

from sqlalchemy.engine import Connection
from sqlalchemy.engine.interfaces import DBAPICursor
from sqlalchemy.sql import Select
from sqlalchemy.sql.cache_key import CacheKey
from sqlalchemy.sql.compiler import SQLCompiler


def cache_key(stmt: Select[Any]) -> CacheKey | None:
    """SQLAlchemy's statement cache key of ``stmt`` (``_generate_cache_key``): ``key``
    is its structure, ``bindparams`` the values it binds in traversal order, ``params``
    those given with ``Select.params()``. None for a statement SQLAlchemy cannot cache.

    Private by name but the documented way to key compiled statements (SQLAlchemy's own
    compiled cache and its caching recipes use it). Saves recompiling the key check per
    delivery: a cached compile is matched by ``key`` (see module figures)."""
    return stmt._generate_cache_key()


def construct_params(
    compiled: SQLCompiler, given: Mapping[str, Any], extracted: Sequence[Any]
) -> dict[str, Any]:
    """Parameters of ``compiled`` for ``given`` values plus the bound values
    ``extracted`` (a :func:`cache_key`'s ``bindparams``) of another statement of the
    same structure: ``construct_params(extracted_parameters=...)``, the call
    SQLAlchemy's statement cache makes for a cache hit. Bind names are not escaped
    (``escape_names=False``): a compiled check with escaped names is never run on the
    driver (:class:`reconcile.store.key_check.KeyCheck`). Saves a compile per delivery
    for a ``pending()`` that binds values of its own."""
    return dict(compiled.construct_params(
        dict(given), extracted_parameters=extracted, escape_names=False))


def raise_dbapi_error(
    conn: Connection, exc: BaseException, statement: str, params: Any, cursor: Any
) -> NoReturn:
    """Hand ``exc``, raised by the driver for ``statement`` run on ``conn``'s DBAPI
    cursor, to SQLAlchemy's own error handling (``Connection._handle_dbapi_exception``):
    it raises the wrapped ``DBAPIError`` (``OperationalError`` for a lost connection),
    invalidates the connection on a disconnect and calls ``handle_error`` listeners,
    exactly as for a statement SQLAlchemy ran. Stable across 2.x. What it saves: see
    the module figures (running statements on the cursor at all)."""
    conn._handle_dbapi_exception(exc, statement, params, cast(DBAPICursor, cursor), None)
    raise AssertionError("unreachable: _handle_dbapi_exception always raises")
