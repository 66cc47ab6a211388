"""The three SQLAlchemy internals reconcile uses, and nothing else of SQLAlchemy's private API.

Every use goes through a function here, so an upgrade that changes one of them breaks
one module, and ``tests/integration/test_private_apis.py`` says which (signature and attribute
checks, plus a behavioural check of each). Tested on SQLAlchemy 2.0.25 and 2.1.9
(the range ``pyproject.toml`` states); each function says what it saves, measured with
``timeit`` on one warm connection (see the figures below), and which public API would
do the same more slowly. With ``fast_paths = false`` none of them is called on a
delivery: the reference path uses public API only (:mod:`reconcile.store.delivery`).

Figures: best of 5 ``timeit`` runs, SQLAlchemy 2.1.9, psycopg 3.3.9, on the shared
2-core machine under load (absolute values high, ratios are the point; the script is
``benchmarks/private_apis.py``):

* :func:`cache_key`: ~16 us per ``pending()`` call of a one-table query (30.7 us with
  building the Select, 14.4 us without). It lets a delivery reuse the check compiled
  for its class instead of compiling ``key_check(pending(), key)``: 437 us;
* :func:`construct_params`: 1.9 us. The public way to the current call's values is to
  compile the statement again (433 us with ``construct_params()``);
* :func:`raise_dbapi_error`: only on a failed statement, so nothing on the hot path.
  It is what makes running the protocol's statements on the driver cursor safe at
  all: the key check took 126 us there, 145 us through ``exec_driver_sql`` and 647 us
  as ``Session.execute(key_check(pending(), key)).scalar()``.
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


def given_params(values: CacheKey) -> Mapping[str, Any]:
    """Values given with ``Select.params()`` that cache key ``values`` carries apart
    from its ``bindparams``: the ``params`` field of SQLAlchemy 2.1. SQLAlchemy 2.0 has
    no such field; there ``params()`` replaces the bound values themselves, which
    ``bindparams`` then carries, so nothing is given apart (empty)."""
    given: Mapping[str, Any] | None = getattr(values, "params", None)
    return given or {}


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
