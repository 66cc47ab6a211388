"""SQL of the reconcile protocol: pending-query pages, one-key re-checks, key locks.

A job's ``pending()`` is a SELECT whose columns are its key. This module derives:

* :func:`page` -- keyset pages over that query (``ORDER BY key LIMIT n``, then
  ``WHERE (key) > (last)``), each in its own short transaction, so a pass over a
  million rows holds no long snapshot and sees rows that change under it;
* :func:`still_pending` -- the query restricted to one key (``EXISTS (SELECT 1 FROM
  (pending) WHERE key = :k)``; PostgreSQL flattens the subquery, so the restriction
  uses the same index as the page scan);
* :func:`delivery_check` -- the same check as the worker runs it: compiled once per
  job class with the key as bind parameters (:class:`KeyCheck`), then executed by
  :class:`DriverTx` on the psycopg connection of the job's transaction;
* :func:`try_key_lock` -- ``pg_try_advisory_xact_lock`` on a 64-bit hash of
  (job name, key): held until the transaction ends, never blocks.

The worker runs three statements of its own per delivery (lock, check, check). Through
a SQLAlchemy Session each cost several times the statement itself in Python (cache
key, execution context, result object): they run on the driver cursor instead, and
SQLAlchemy still sees their errors (see :class:`DriverTx`).

Key columns must be NOT NULL and sortable (NULL keys cannot be paged by keyset).
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar, cast

import orjson
import psycopg
import sqlalchemy as sa
from psycopg import pq
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.engine.interfaces import DBAPICursor
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select
from sqlalchemy.sql.cache_key import CacheKey
from sqlalchemy.sql.compiler import SQLCompiler

from ..errors import PendingQueryError


def key_columns(stmt: Select[Any]) -> int:
    """Number of key columns of a pending query."""
    if not isinstance(stmt, Select):
        raise PendingQueryError(f"pending() must return a SQLAlchemy Select, got {type(stmt).__name__}")
    n = len(stmt.selected_columns)
    if n == 0:
        raise PendingQueryError("pending() selects no column; its columns are the job's key")
    return n


def page(
    engine: Engine, stmt: Select[Any], after: Sequence[Any] | None, limit: int
) -> list[tuple[Any, ...]]:
    """The next ``limit`` keys after ``after`` (None: from the start), in key order."""
    sub = stmt.subquery("pending")
    cols = list(sub.c)
    q = sa.select(*cols).order_by(*cols).limit(limit)
    if after is not None:
        q = q.where(
            sa.tuple_(*cols) > sa.tuple_(*[sa.literal(v, c.type) for c, v in zip(cols, after, strict=True)])
        )
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(q)]


KEY_PARAM = "reconcile_key_{}"
"""Name of the bind parameter of key column ``i`` in a compiled key check."""


def key_check(stmt: Select[Any], key: Sequence[Any] | None = None) -> Select[Any]:
    """``SELECT EXISTS (SELECT 1 FROM (stmt) AS pending WHERE key columns = key)``.

    Each key value is a bind parameter named ``KEY_PARAM.format(i)`` typed like its
    column. With ``key`` None the parameters have no value: the statement is the same
    for every key (compile it once, give the key at execution).
    """
    sub = stmt.subquery("pending")
    cols = list(sub.c)
    if key is not None and len(cols) != len(key):
        raise PendingQueryError(f"key {list(key)!r} has {len(key)} values, pending() selects {len(cols)}")
    cond = sa.and_(*[
        c == (sa.bindparam(KEY_PARAM.format(i), type_=c.type) if key is None
              else sa.bindparam(KEY_PARAM.format(i), key[i], type_=c.type))
        for i, c in enumerate(cols)
    ])
    return sa.select(sa.exists(sa.select(sa.literal_column("1")).select_from(sub).where(cond)))


def run_check(bind: Session | Connection, check: Select[Any]) -> bool:
    """Run a :func:`key_check` (built with its key) in ``bind``'s transaction."""
    return bool(bind.execute(check).scalar())


def still_pending(bind: Session | Connection, stmt: Select[Any], key: Sequence[Any]) -> bool:
    """Whether ``key`` is among the rows of ``stmt``, seen by ``bind``'s transaction."""
    return run_check(bind, key_check(stmt, key))


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """A pending query restricted to one key, compiled once (see :func:`compile_key_check`).

    ``sql`` is the statement as psycopg takes it (``%(reconcile_key_0)s`` placeholders
    for the key, others for values that ``pending()`` binds), or None when no compiled
    string can stand for the query: an ``in_()`` list of values (rendered per call),
    bind names SQLAlchemy must escape, or a driver other than psycopg. A None check is
    rebuilt and run through SQLAlchemy for each delivery (:func:`still_pending`).
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
            if values.params:  # values given with Select.params()
                given = {**values.params, **given}
            given = self.compiled.construct_params(
                given, extracted_parameters=values.bindparams, escape_names=False)
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
"""One delivery's key check: SQL and parameters for :meth:`DriverTx.exists`, or a
statement for SQLAlchemy to run (:func:`run_check`)."""


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
    # SQLAlchemy's statement cache key: underscored, but the documented way to key
    # compiled statements (its own compiled cache and its caching recipes use it).
    values = stmt._generate_cache_key() if dialect.driver == "psycopg" else None
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


def lock_id(job: str, key: Sequence[Any]) -> int:
    """Signed 64-bit advisory-lock id of (job, key)."""
    digest = hashlib.blake2b(orjson.dumps([job, list(key)]), digest_size=8).digest()
    return int(struct.unpack(">q", digest)[0])


LOCK_SQL = "SELECT pg_try_advisory_xact_lock(%s::bigint)"
TIMEOUTS_SQL = ("SELECT set_config('statement_timeout', %(ms)s, true), "
                "set_config('idle_in_transaction_session_timeout', %(ms)s, true)")


_CURSOR = "reconcile.cursor"
_C = TypeVar("_C", psycopg.Cursor[Any], psycopg.ClientCursor[Any])
_CLIENT_CURSOR = "reconcile.client_cursor"
NOT_CONVERGED = "reconcile: the key is still pending after perform"
"""Marker of the failed cast that aborts a non-converged delivery's COMMIT."""


class DriverTx:
    """The protocol's own statements, run on the psycopg connection under ``bind``.

    ``bind`` is a Session or Connection inside a transaction; the statements run in
    that transaction (the same database connection) but skip SQLAlchemy's statement
    machinery, which cost several times the statement itself per delivery: no
    statement cache key, no result object. Consequences: engine events such as
    ``before_cursor_execute`` and ``echo`` do not see these statements. Errors are
    handed to SQLAlchemy as if it had run the statement: wrapped in ``DBAPIError``
    (``OperationalError`` for a lost connection), the connection invalidated on a
    disconnect, ``handle_error`` listeners called.
    """

    __slots__ = ("conn", "cursor")

    def __init__(self, bind: Session | Connection) -> None:
        self.conn = bind.connection() if isinstance(bind, Session) else bind
        self.cursor = self._pooled_cursor(_CURSOR, psycopg.Cursor)

    def _pooled_cursor(self, key: str, kind: type[_C]) -> _C:
        """This connection's cursor of ``kind``, kept in the pool record's info (which
        SQLAlchemy clears when the connection is closed or invalidated): creating a
        cursor costs a third of running one of these statements. (SQLAlchemy closes the
        cursor of a failed statement: then a new one.)"""
        pooled = self.conn.connection
        cursor: _C | None = pooled.info.get(key)
        if cursor is None or cursor.closed or cursor.connection is not pooled.driver_connection:
            cursor = pooled.info[key] = kind(pooled.driver_connection)  # type: ignore[arg-type]
        return cursor

    def _fail(self, exc: psycopg.Error, statement: str, params: Any, cursor: Any) -> NoReturn:
        """Hand a failed statement to SQLAlchemy's own handling (private, stable across
        2.x): it raises the wrapped ``DBAPIError`` and invalidates a lost connection."""
        self.conn._handle_dbapi_exception(exc, statement, params, cast(DBAPICursor, cursor), None)
        raise AssertionError("unreachable: _handle_dbapi_exception always raises")

    def _scalar(self, statement: str, params: Sequence[Any] | dict[str, Any]) -> Any:
        try:
            self.cursor.execute(statement, params)
            row = self.cursor.fetchone()
        except psycopg.Error as exc:
            self._fail(exc, statement, params, self.cursor)
        return None if row is None else row[0]

    @property
    def backend_pid(self) -> int:
        """PostgreSQL backend pid of this connection (no round trip)."""
        return int(self.cursor.connection.info.backend_pid)

    def set_local_timeouts(self, seconds: float) -> None:
        """See :func:`set_local_timeouts` (here in one statement)."""
        ms = str(max(1, int(seconds * 1000)))
        self._scalar(TIMEOUTS_SQL, {"ms": ms})

    def try_lock(self, lock: int) -> bool:
        """``pg_try_advisory_xact_lock(lock)``: False if another transaction holds it."""
        return bool(self._scalar(LOCK_SQL, (lock,)))

    def begin_locked(self, lock: int) -> bool:
        """Open the transaction and take ``pg_try_advisory_xact_lock(lock)`` in ONE round
        trip; falls back to :meth:`try_lock` once a transaction is open.

        psycopg sends its implicit ``BEGIN`` as a round trip of its own. Here the
        connection is switched to autocommit (so psycopg sends no ``BEGIN``) and
        ``BEGIN; SELECT pg_try_advisory_xact_lock(<id>)`` goes as one simple query (the
        id is an integer we made, so it is inlined safely). Everything after runs in
        that server transaction, and ``commit()``/``rollback()`` still end it (psycopg
        sends them whenever a transaction is open). Only for connections of
        :func:`~reconcile.store.engine.get_engine`, whose checkin hook switches
        autocommit off again before the connection can serve anyone else.
        """
        drv = self.cursor.connection
        if (
            drv.info.transaction_status != pq.TransactionStatus.IDLE
            or drv.autocommit
            or drv.isolation_level is not None
            or drv.read_only is not None
            or drv.deferrable is not None
        ):
            return self.try_lock(lock)
        statement = b"BEGIN; SELECT pg_try_advisory_xact_lock(%d)" % int(lock)
        drv.autocommit = True
        try:
            self.cursor.execute(statement, prepare=False)
            self.cursor.nextset()
            row = self.cursor.fetchone()
        except psycopg.Error as exc:
            self._fail(exc, statement.decode(), (), self.cursor)
        return bool(row and row[0])

    def commit_if_converged(self, check: tuple[str, dict[str, Any]]) -> bool:
        """Steps 4 and 5 in ONE round trip: re-check and ``COMMIT`` together; False (and
        the transaction aborted, to be rolled back) if the key is still pending.

        The check becomes ``SELECT (CASE WHEN (<check>) THEN '<marker>' END)::int`` and
        goes with ``COMMIT`` as one simple query: a pending key makes the cast fail, so
        the server skips the ``COMMIT`` and the transaction is aborted; otherwise the
        transaction is committed when the call returns. Parameters are bound on the
        client by psycopg's own adapters (the simple protocol takes none). Any other
        error (of the check or of the ``COMMIT``) is SQLAlchemy's, as for every
        statement here.
        """
        sql, params = check
        client = self._pooled_cursor(_CLIENT_CURSOR, psycopg.ClientCursor)
        bound = client.mogrify(sql, params)
        # the cast applies to the CASE's result, so it fails at run time only (a cast of
        # the constant itself would be folded, and fail, while planning)
        statement = f"SELECT (CASE WHEN ({bound}) THEN '{NOT_CONVERGED}' END)::int; COMMIT"
        try:
            client.execute(statement, prepare=False)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.errors.InvalidTextRepresentation) and NOT_CONVERGED in str(exc):
                return False
            self._fail(exc, statement, (), client)
        return True

    def exists(self, check: tuple[str, dict[str, Any]]) -> bool:
        """Run a compiled check from :func:`delivery_check`: whether the key is still pending."""
        return bool(self._scalar(*check))


def try_key_lock(bind: Session | Connection, job: str, key: Sequence[Any]) -> bool:
    """Take the transaction-scoped advisory lock of (job, key); False if another holds it."""
    return DriverTx(bind).try_lock(lock_id(job, key))


def set_local_timeouts(bind: Session | Connection, seconds: float) -> None:
    """Bound this transaction: any statement, and any idle time inside it, to ``seconds``.

    ``idle_in_transaction_session_timeout`` is the fence for a perform that hangs in
    Python: PostgreSQL ends the session, so the transaction can never commit late.
    (``set_config(..., true)`` is ``SET LOCAL``, with the value as a parameter.)
    """
    DriverTx(bind).set_local_timeouts(seconds)


def backend_pid(session: Session) -> int:
    """PostgreSQL backend pid of the session's connection (no round trip)."""
    driver = session.connection().connection.driver_connection
    return int(driver.info.backend_pid)  # type: ignore[union-attr]


def terminate_backend(engine: Engine, pid: int) -> bool:
    """End backend ``pid`` (its open transaction is rolled back, it cannot commit)."""
    with engine.connect() as conn:
        return bool(conn.execute(sa.select(sa.func.pg_terminate_backend(pid))).scalar())
