"""A pending query restricted to one key, compiled once per job class: steps 2 and 4's check.

:func:`delivery_check` gives the worker one delivery's check of a key: SQL and
parameters run on the driver connection (:class:`~reconcile.store.driver_tx.DriverTx`)
when the pending query compiles to a fixed string, else a statement SQLAlchemy runs
(:func:`reconcile.store.pending.key_check` with the key). Compiling costs more than
the whole rest of the delivery's protocol, so it happens on a class's first delivery
and again only when ``pending()`` builds a different structure (see
:func:`delivery_check` for when ``pending()`` is called again).

This is a fast path: its reference is :func:`reconcile.store.pending.still_pending`
(``key_check(pending(), key)`` through the Session), which the worker runs instead
with ``fast_paths = false``. Both answer the same; ``tests/integration/test_reconciled_fastpath.py``
holds them to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Select
from sqlalchemy.sql.cache_key import CacheKey
from sqlalchemy.sql.compiler import SQLCompiler

from ..errors import PendingQueryError
from . import _sqlalchemy_private as sa_private
from .pending import KEY_PARAM, key_check, key_columns


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """A pending query restricted to one key, compiled once (see :func:`compile_key_check`).

    ``sql`` is the statement as psycopg takes it (``%(reconcile_key_0)s`` placeholders
    for the key, others for values that ``pending()`` binds), or None when no compiled
    string can stand for the query: an ``in_()`` list of values (rendered per call),
    bind names SQLAlchemy must escape, or a driver other than psycopg. A None check is
    rebuilt and run through SQLAlchemy for each delivery (:func:`~reconcile.store.pending.still_pending`).
    """

    shape: Any
    """SQLAlchemy's cache key of the pending query: its structure, not its values."""
    sql: str | None
    compiled: SQLCompiler
    names: tuple[str, ...]
    """Placeholder of each key column, in column order."""
    bound: bool
    """Whether the pending query binds values of its own (taken from each call)."""
    processors: dict[str, Callable[[Any], Any]]
    """SQLAlchemy's bind processor of each placeholder whose type has one."""

    def params(self, key: Sequence[Any], values: CacheKey | None) -> dict[str, Any]:
        """Driver parameters for ``key`` and the values bound by the pending query whose
        cache key is ``values`` (a call of ``pending()`` with this check's shape; None
        is allowed when the query binds no value of its own)."""
        if len(key) != len(self.names):
            raise PendingQueryError(
                f"key {list(key)!r} has {len(key)} values, pending() selects {len(self.names)}")
        given: MutableMapping[str, Any] = dict(zip(self.names, key, strict=True))
        if self.bound:
            assert values is not None
            extra = sa_private.given_params(values)  # values given with Select.params()
            if extra:
                given = {**extra, **given}
            # private API (the shim says what it saves): this call's values, no compile
            given = sa_private.construct_params(self.compiled, given, values.bindparams)
        procs = self.processors
        if not procs:
            return dict(given)
        return {name: procs[name](v) if name in procs else v for name, v in given.items()}


def compile_key_check(stmt: Select[Any], dialect: Dialect, values: CacheKey) -> KeyCheck:
    """Compile ``stmt`` (whose cache key is ``values``) restricted to one key, with the
    key as parameters, for ``dialect``: one statement for every key, and for every call
    of ``pending()`` that builds the same structure (values are matched by position in
    the cache key, as SQLAlchemy's own statement cache does)."""
    n = key_columns(stmt)
    names = tuple(KEY_PARAM.format(i) for i in range(n))
    compiled = key_check(stmt).compile(dialect=dialect, cache_key=values)
    assert isinstance(compiled, SQLCompiler)
    processors: dict[str, Callable[[Any], Any]] = {}
    for bind, name in compiled.bind_names.items():
        proc = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if proc is not None:
            processors[name] = proc
    usable = (
        dialect.driver == "psycopg"
        and not compiled.positional
        and not compiled.post_compile_params  # expanding IN lists, literal_execute
        and not compiled.escaped_bind_names
    )
    return KeyCheck(
        shape=values.key, sql=compiled.string if usable else None, compiled=compiled, names=names,
        bound=set(compiled.bind_names.values()) != set(names), processors=processors,
    )


REVERIFY_SECONDS = 1.0
"""How long a compiled check whose query binds no value of its own is used without
calling ``pending()`` again to compare structures."""

_class_checks: dict[tuple[type, Dialect], tuple[KeyCheck, float]] = {}

Check = tuple[str, dict[str, Any]] | Select[Any]
"""One delivery's key check: SQL and parameters for :meth:`~reconcile.store.driver_tx.DriverTx.exists`, or a
statement for SQLAlchemy to run (:func:`~reconcile.store.pending.run_check`)."""


def delivery_check(
    owner: type, pending: Callable[[], Select[Any]], dialect: Dialect, key: Sequence[Any]
) -> Check:
    """The pending query of job class ``owner`` restricted to ``key``, for one delivery.

    The check is compiled on the class's first delivery (per dialect, i.e. per engine)
    and again only when ``pending()`` builds a different structure. ``pending()`` is
    called for each delivery when it binds values of its own (a string constant,
    ``datetime.now()``): they are that call's. When it binds none, its compiled check
    is used as is, and ``pending()`` is called again at most every
    :data:`REVERIFY_SECONDS` to notice a change of structure. A statement that cannot
    be compiled once (see :class:`KeyCheck`) or cached by SQLAlchemy is returned as a
    statement, built from one call. Thread-safe: threads that compile at once store
    equal checks.
    """
    now = time.monotonic()
    entry = _class_checks.get((owner, dialect))
    if entry is not None and now < entry[1]:
        check = entry[0]
        assert check.sql is not None  # only such checks are given a reuse time
        return check.sql, check.params(key, None)
    stmt = pending()
    # private API (the shim says what it saves): the structure, to reuse the compiled check
    values = sa_private.cache_key(stmt) if dialect.driver == "psycopg" else None
    if values is None:
        return key_check(stmt, key)
    if entry is None or entry[0].shape != values.key:
        check = compile_key_check(stmt, dialect, values)
    else:
        check = entry[0]
    # only a check whose SQL holds no value of pending() may skip the next calls
    reuse_until = now + REVERIFY_SECONDS if check.sql is not None and not check.bound else 0.0
    _class_checks[(owner, dialect)] = (check, reuse_until)
    if check.sql is None:
        return key_check(stmt, key)
    return check.sql, check.params(key, values)


