"""Keyset pages of a pending query, compiled once per pass and read through the driver.

:func:`reader` returns a ``page(after)`` function with the contract of
:func:`reconcile.store.pending.page` (the next ``limit`` keys after ``after`` in key
order, each page in its own short transaction, rows as tuples), built for a pass that
reads a thousand pages of one query:

* the two statements (first page; a page after a key) are built and compiled once,
  with the key of the previous page as bind parameters, not once per page;
* each page is one autocommit SELECT: its own transaction, one round trip;
* rows come from the DBAPI cursor as the driver returns them, without SQLAlchemy's
  per-row result processing (about five times less client CPU per key with psycopg,
  and the GIL stays free for the thread pushing the previous page).

That is only equivalent when SQLAlchemy would not convert anything: the fast reader is
used when no bound parameter and no key column has a type that processes values for
this dialect (plain integers and strings do not), the dialect binds parameters by
name, and it has an autocommit mode. Otherwise :func:`reader` falls back to
:func:`~reconcile.store.pending.page`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.sql import Select

from . import pending

PageReader = Callable[[Sequence[Any] | None], list[tuple[Any, ...]]]

_AFTER = "reconcile_after_{}"


def reader(engine: Engine, stmt: Select[Any], limit: int, fast: bool = True,
           upper: Sequence[Any] | None = None) -> PageReader:
    """A page reader for ``stmt``: the fast one when it is equivalent and ``fast`` (the
    setting ``fast_paths``), else the reference, ``pending.page``. With ``upper``, pages
    end at that key (inclusive): a partition's range, bounded in the SQL, so a partition
    reads only its own keys (the lower bound is the first ``after``)."""
    pages = KeysetPages.build(engine, stmt, limit, upper) if fast else None
    if pages is not None:
        return pages.page
    return lambda after: pending.page(engine, stmt, after, limit, upper)


class KeysetPages:
    """The compiled keyset statements of one pending query (see the module docstring)."""

    def __init__(self, engine: Engine, first: tuple[str, dict[str, Any]],
                 after: tuple[str, dict[str, Any]], names: list[str]) -> None:
        self._engine = engine
        self._first_sql, self._first_params = first
        self._after_sql, self._after_params = after
        self._names = names

    @classmethod
    def build(cls, engine: Engine, stmt: Select[Any], limit: int,
              upper: Sequence[Any] | None = None) -> KeysetPages | None:
        """Compile ``stmt``'s pages, or None where the driver's rows or parameters would
        differ from what SQLAlchemy makes of them."""
        pending.key_columns(stmt)
        dialect = engine.dialect
        sub = stmt.subquery("pending")
        cols = list(sub.c)
        first = sa.select(*cols).order_by(*cols).limit(limit).where(
            *pending.range_conditions(cols, None, upper))
        names = [_AFTER.format(i) for i in range(len(cols))]
        binds = [sa.bindparam(n, None, type_=c.type) for n, c in zip(names, cols, strict=True)]
        nxt = first.where(sa.tuple_(*cols) > sa.tuple_(*binds))
        for col in cols:
            try:
                processor = col.type.dialect_impl(dialect).result_processor(dialect, None)
            except Exception:
                # some types need the column's type code to decide (psycopg's NUMERIC):
                # without it, assume they process values
                return None
            if processor is not None:
                return None
        with engine.connect() as conn:
            driver = conn.connection.dbapi_connection
            if "AUTOCOMMIT" not in dialect.get_isolation_level_values(driver):  # type: ignore[arg-type]
                return None
        compiled = []
        for q in (first, nxt):
            c = q.compile(dialect=dialect)
            if c.positional:
                return None
            for bind in c.binds.values():
                if bind.type.dialect_impl(dialect).bind_processor(dialect) is not None:
                    return None
            # the statement as executed: IN lists and literal_execute values expanded
            state = c.construct_expanded_state()
            compiled.append((state.statement, dict(state.parameters)))
        return cls(engine, compiled[0], compiled[1], names)

    def page(self, after: Sequence[Any] | None) -> list[tuple[Any, ...]]:
        """The next keys after ``after`` (None: from the start), in key order."""
        if after is None:
            sql, params = self._first_sql, self._first_params
        else:
            sql = self._after_sql
            params = {**self._after_params, **dict(zip(self._names, after, strict=True))}
        # A pooled connection for this page only, in autocommit: the SELECT is its own
        # transaction (no snapshot outlives the page) and costs one round trip instead
        # of three (BEGIN, SELECT, then ROLLBACK when the pool takes it back).
        dialect = self._engine.dialect
        error = dialect.loaded_dbapi.Error
        conn = self._engine.raw_connection()
        driver = conn.dbapi_connection
        try:
            cursor = conn.cursor()
            try:
                dialect.set_isolation_level(driver, "AUTOCOMMIT")  # type: ignore[arg-type]
                cursor.execute(sql, params)
                rows = cast("list[tuple[Any, ...]]", cursor.fetchall())
                dialect.reset_isolation_level(driver)  # type: ignore[arg-type]
                return rows
            except error as exc:
                # what SQLAlchemy's own execution does: a connection the server dropped
                # is not handed out again, and the error is the usual DBAPIError
                lost = dialect.is_disconnect(exc, conn, cursor)
                if lost:
                    conn.invalidate(exc)
                else:
                    dialect.reset_isolation_level(driver)  # type: ignore[arg-type]
                raise sa.exc.DBAPIError.instance(
                    sql, params, exc, error, connection_invalidated=lost, dialect=dialect
                ) from exc
            finally:
                cursor.close()
        finally:
            conn.close()
