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

The worker runs statements of its own per delivery (lock, check, check), in two simple
queries. Through a SQLAlchemy Session each would cost several times the statement
itself in Python (cache key, execution context, result object): they go to the driver
connection instead, and SQLAlchemy still sees their errors (see :class:`DriverTx`).

Key columns must be NOT NULL and sortable (NULL keys cannot be paged by keyset).
"""

from __future__ import annotations

import hashlib
import logging
import re
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

from ..errors import CheckGone, PendingQueryError

log = logging.getLogger("reconcile.store")


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


def timeouts_sql(seconds: float) -> str:
    """``SET LOCAL`` of ``statement_timeout`` and ``idle_in_transaction_session_timeout``
    to ``seconds`` (whole milliseconds, at least 1, inlined: an integer made here).

    ``idle_in_transaction_session_timeout`` is the fence for a perform that hangs in
    Python: PostgreSQL ends the session, so the transaction can never commit late.
    """
    ms = max(1, int(seconds * 1000))
    return (f"SELECT set_config('statement_timeout', '{ms}', true), "
            f"set_config('idle_in_transaction_session_timeout', '{ms}', true)")


def not_converged_cast(check: str) -> str:
    """``check`` as the statement that fails (with :data:`NOT_CONVERGED`) while the key
    is still pending: the cast applies to the CASE's result, so it fails at run time
    only (a cast of the constant itself would be folded, and fail, while planning)."""
    return f"SELECT (CASE WHEN ({check}) THEN '{NOT_CONVERGED}' END)::int"


_CURSOR = "reconcile.cursor"
_C = TypeVar("_C", psycopg.Cursor[Any], psycopg.ClientCursor[Any])
_V = TypeVar("_V")
_CLIENT_CURSOR = "reconcile.client_cursor"
_PREPARED = "reconcile.prepared"
_ENCODING = "reconcile.encoding"
NOT_CONVERGED = "reconcile: the key is still pending after perform"
"""Marker of the failed cast that aborts a non-converged delivery's COMMIT."""
LOCK_BUSY = "reconcile: the lock of the key is held by another transaction"
"""Marker of the failed cast that ends step 1 when the key's lock is taken."""


@dataclass(frozen=True, slots=True)
class PreparedCheck:
    """A compiled check as SQL-level prepared statements (see :func:`prepared_form`).

    ``prepare`` creates two statements on a connection: ``<name>`` (the check) and
    ``<name>_c`` (the check as the failing cast of :meth:`DriverTx.commit_if_converged`).
    ``execute`` and ``commit`` call them: psycopg templates taking the check's params.
    """

    name: str
    prepare: str
    execute: str
    commit: str
    order: tuple[str, ...]
    """Parameter names in positional order."""

    def inline(self, commit: bool, params: dict[str, Any]) -> str | None:
        """``EXECUTE`` (or the commit check's) with ``params`` inlined when every one
        is a plain ``int`` (the common integer key), which needs no quoting: the
        decimal text of an int is its SQL literal. None otherwise (psycopg's
        ``mogrify`` binds them)."""
        values = [params[n] for n in self.order]
        if not all(type(v) is int for v in values):
            return None
        suffix = "_c" if commit else ""
        return f"EXECUTE {self.name}{suffix}({', '.join(map(str, values))})"


_PLACEHOLDER = re.compile(r"%%|%\((\w+)\)s")
_forms: dict[str, PreparedCheck] = {}


def prepared_form(sql: str) -> PreparedCheck:
    """The prepared-statement form of check ``sql`` (psycopg's ``%(name)s`` format, as
    :class:`KeyCheck` holds it): placeholders become ``$1..$n`` in order of first use,
    ``%%`` becomes ``%``. Named after a hash of ``sql``, so every process and connection
    gives the same check the same name. Memoised (one entry per check SQL)."""
    form = _forms.get(sql)
    if form is not None:
        return form
    order: list[str] = []

    def positional(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return "%"
        if m.group(1) not in order:
            order.append(m.group(1))
        return f"${order.index(m.group(1)) + 1}"

    body = _PLACEHOLDER.sub(positional, sql)
    name = "reconcile_" + hashlib.blake2b(sql.encode(), digest_size=8).hexdigest()
    args = "(" + ", ".join(f"%({n})s" for n in order) + ")"
    form = _forms[sql] = PreparedCheck(
        name=name,
        prepare=f"PREPARE {name} AS {body}; PREPARE {name}_c AS {not_converged_cast(body)}",
        execute=f"EXECUTE {name}{args}",
        commit=f"EXECUTE {name}_c{args}",
        order=tuple(order),
    )
    return form


_prepared_off: list[str] = []
"""Holds the reason once prepared checks turned out not to work in this process."""
_unpreparable: set[str] = set()
"""Check SQL that PostgreSQL refused to prepare (sent as SQL instead)."""
_commit_as_sql: set[str] = set()
"""Check SQL whose prepared commit check was deallocated during a perform: its job's
perform rolls back savepoints or runs DDL, so its commit checks go as SQL."""


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

    __slots__ = ("conn", "cursor", "prepare")

    def __init__(self, bind: Session | Connection, prepare: bool = False) -> None:
        self.conn = bind.connection() if isinstance(bind, Session) else bind
        self.cursor = self._pooled_cursor(_CURSOR, psycopg.Cursor)
        self.prepare = prepare and not _prepared_off
        """Whether compiled checks run as prepared statements (``prepared_checks``)."""

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
        """Bound this transaction: any statement, and any idle time in it, to ``seconds``
        (see :func:`timeouts_sql`)."""
        self._scalar(timeouts_sql(seconds), ())

    def try_lock(self, lock: int) -> bool:
        """``pg_try_advisory_xact_lock(lock)``: False if another transaction holds it."""
        return bool(self._scalar(LOCK_SQL, (lock,)))

    def _plain_idle(self) -> bool:
        """Whether the connection is idle and at the server's defaults, so
        :meth:`open_delivery` may open the transaction itself. (Autocommit may be on: a
        worker thread's held connection keeps it on between deliveries.)"""
        drv = self.cursor.connection
        return (
            drv.info.transaction_status == pq.TransactionStatus.IDLE
            and drv.isolation_level is None
            and drv.read_only is None
            and drv.deferrable is None
        )

    def open_delivery(
        self, lock: int, check: tuple[str, dict[str, Any]] | None = None, timeout: float | None = None
    ) -> tuple[bool, bool | None]:
        """Steps 1 and 2 in ONE round trip: open the transaction, bound it to ``timeout``
        seconds (see :func:`timeouts_sql`), take ``pg_try_advisory_xact_lock(lock)``
        and run ``check`` (from :func:`delivery_check`). Returns (locked, still pending);
        pending is None when no check was given or the lock is held elsewhere.

        psycopg sends its implicit ``BEGIN`` as a round trip of its own. Here the
        connection is switched to autocommit (so psycopg sends no ``BEGIN``) and
        ``BEGIN; [SELECT set_config(...);] SELECT (CASE WHEN
        pg_try_advisory_xact_lock(<id>) THEN NULL ELSE '<marker>' END)::int; <check>``
        goes as one simple query (the check as ``EXECUTE`` of its prepared statement
        when ``prepare`` is on). A lock held elsewhere fails the cast, so the server
        runs nothing after it and the transaction is rolled back. The check is its own
        statement after the lock's: under READ COMMITTED each statement of a simple
        query takes a new snapshot, so the check sees every commit of a transaction
        that held the lock before us (a check inside the lock's statement would use a
        snapshot taken before the lock was granted). The id and the milliseconds are
        integers made here and the check's parameters are bound as :meth:`_bound`
        says, so inlining is safe. Everything after runs in that server
        transaction, and ``commit()``/``rollback()`` still end it (psycopg sends them
        whenever a transaction is open). Only for connections of
        :func:`~reconcile.store.engine.get_engine`, whose checkin hook switches
        autocommit off again before the connection can serve anyone else. On a
        connection already in a transaction or with its own isolation settings, the
        same steps run one statement each.
        """
        if not self._plain_idle():
            drv = self.cursor.connection
            if drv.autocommit and drv.info.transaction_status == pq.TransactionStatus.IDLE:
                drv.autocommit = False  # the statements below must share one transaction
            if timeout:
                self.set_local_timeouts(timeout)
            if not self.try_lock(lock):
                return False, None
            return True, None if check is None else self.exists(check)
        form = self._prepared(check[0]) if check is not None and self.prepare else None
        try:
            return self._open(lock, check, timeout, form)
        except psycopg.errors.InvalidSqlStatementName:
            # Our record of this connection's statements is stale: psycopg sends
            # DEALLOCATE ALL after a rollback once it has prepared statements of its own
            # (so do DDL and DISCARD ALL). Nothing happened in that transaction yet:
            # roll it back, prepare again and repeat the step.
            self._rollback()
            self._names().clear()
        assert check is not None
        form = self._prepared(check[0])
        try:
            return self._open(lock, check, timeout, form)
        except psycopg.errors.InvalidSqlStatementName:
            # gone right after being made: not the same server session (a pooler)
            self._rollback()
            self._prepared_off("a statement prepared on this connection was gone at once")
            self.prepare = False
            return self._open(lock, check, timeout, None)

    def _open(self, lock: int, check: tuple[str, dict[str, Any]] | None, timeout: float | None,
              form: PreparedCheck | None) -> tuple[bool, bool | None]:
        parts = ["BEGIN"]
        if timeout:
            parts.append(timeouts_sql(timeout))
        # a lock held elsewhere fails the cast with a marker: the query stops there
        parts.append(f"SELECT (CASE WHEN pg_try_advisory_xact_lock({int(lock)}) THEN NULL "
                     f"ELSE '{LOCK_BUSY}' END)::int")
        if check is not None:
            parts.append(self._bound(check, form, commit=False))
        statement = "; ".join(parts)
        self.cursor.connection.autocommit = True
        try:
            result = self._simple(statement)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.errors.InvalidTextRepresentation) and LOCK_BUSY in str(exc):
                self._rollback()  # only the lock was tried
                return False, None
            if form is not None and isinstance(exc, psycopg.errors.InvalidSqlStatementName):
                raise  # open_delivery prepares again, or switches prepared checks off
            self._fail(exc, statement, (), self.cursor)
        if check is None:
            return True, None
        return True, result.get_value(0, 0) == b"t"

    def _bound(self, check: tuple[str, dict[str, Any]], form: PreparedCheck | None,
               commit: bool) -> str:
        """``check`` as one statement of a simple query: the ``EXECUTE`` of its prepared
        ``form`` (with ``commit``, of the failing-cast one), or without a form its SQL
        (with ``commit``, as :func:`not_converged_cast`). Plain ints are written as their
        decimal text (:meth:`PreparedCheck.inline`); any other parameter is bound by
        psycopg's own adapters (``ClientCursor.mogrify``), so inlining is safe."""
        sql, params = check
        if form is not None:
            inlined = form.inline(commit, params)
            if inlined is not None:
                return inlined
        client = self._pooled_cursor(_CLIENT_CURSOR, psycopg.ClientCursor)
        if form is not None:
            return client.mogrify(form.commit if commit else form.execute, params)
        bound = client.mogrify(sql, params)
        return not_converged_cast(bound) if commit else bound

    def _simple(self, statement: str) -> pq.abc.PGresult:
        """Send ``statement`` (SQL statements, no parameters) as ONE simple query and
        return the result of its last statement. PostgreSQL stops at the first error,
        which is raised as psycopg raises it (a lost connection: ``OperationalError``).

        libpq's blocking ``PQexec`` (psycopg's ``pgconn.exec_``, which releases the GIL
        while it waits) instead of a cursor: the protocol's statements need none of a
        cursor's work (query conversion, its prepared-statement bookkeeping, result
        sets), which cost as much Python time as the rest of the delivery's protocol.
        psycopg reads the transaction state from libpq, so it stays right.
        """
        drv = self.cursor.connection
        pgconn = drv.pgconn
        result = pgconn.exec_(statement.encode(self._encoding()))
        if result.status == pq.ExecStatus.FATAL_ERROR:
            if pgconn.status == pq.ConnStatus.BAD:
                raise psycopg.OperationalError(
                    (result.error_message or pgconn.error_message).decode("utf-8", "replace").strip())
            raise psycopg.errors.error_from_result(result, encoding=self._encoding())
        return result

    def _rollback(self) -> None:
        """End the server transaction step 1 opened (nothing happened in it yet). Sent
        as a query of our own: psycopg's ``rollback()`` would also deallocate every
        prepared statement of the connection, ours included, once it has any."""
        try:
            self._simple("ROLLBACK")
        except psycopg.Error as exc:
            self._fail(exc, "ROLLBACK", (), self.cursor)

    def _kept(self, key: str, make: Callable[[], _V]) -> _V:
        """A value of this driver connection, kept (like the cursors) in the pool
        record's info and made again for another driver connection under the record."""
        pooled = self.conn.connection
        entry: tuple[Any, _V] | None = pooled.info.get(key)
        if entry is None or entry[0] is not pooled.driver_connection:
            entry = pooled.info[key] = (pooled.driver_connection, make())
        return entry[1]

    def _encoding(self) -> str:
        """Python name of the connection's client encoding."""
        return self._kept(_ENCODING, lambda: self.cursor.connection.info.encoding)

    def _names(self) -> set[str]:
        """Names of the checks prepared on this connection."""
        return self._kept(_PREPARED, set)

    def _prepared(self, sql: str) -> PreparedCheck | None:
        """The prepared form of check ``sql``, prepared on this (idle) connection first
        if it is not yet: one extra round trip per connection and check, outside any
        transaction. None if PostgreSQL refuses to prepare it (a parameter whose type it
        cannot infer, say): the check is then sent as SQL, as without prepared checks."""
        form = prepared_form(sql)
        names = self._names()
        if form.name in names:
            return form
        if sql in _unpreparable:
            return None
        try:  # the connection is idle (checked by the caller): outside any transaction
            self._simple(form.prepare)
        except psycopg.errors.DuplicatePreparedStatement:
            pass  # made on this server connection before we kept track: usable
        except psycopg.Error as exc:
            # a statement PostgreSQL will not prepare (class 42: e.g. a parameter of no
            # inferable type; 0A: not supported) is sent as SQL; anything else is an error
            if not (exc.sqlstate or "").startswith(("42", "0A")):
                self._fail(exc, form.prepare, (), self.cursor)
            _unpreparable.add(sql)
            log.info("key check not prepared (%s); it is sent as SQL: %s", str(exc).strip(), sql)
            return None
        names.add(form.name)
        return form

    @staticmethod
    def _prepared_off(reason: str) -> None:
        if not _prepared_off:
            _prepared_off.append(reason)
            log.warning("prepared key checks switched off in this process: %s (behind a pooler in "
                        "transaction mode, set prepared_checks = false)", reason)

    def commit_if_converged(self, check: tuple[str, dict[str, Any]]) -> bool:
        """Steps 4 and 5 in ONE round trip: re-check and ``COMMIT`` together; False (and
        the transaction aborted, to be rolled back) if the key is still pending.

        The check becomes ``SELECT (CASE WHEN (<check>) THEN '<marker>' END)::int`` and
        goes with ``COMMIT`` as one simple query: a pending key makes the cast fail, so
        the server skips the ``COMMIT`` and the transaction is aborted; otherwise the
        transaction is committed when the call returns. Parameters are bound on the
        client, as :meth:`_bound` says (the simple protocol takes none). Any other
        error (of the check or of the ``COMMIT``) is SQLAlchemy's, as for every
        statement here.
        """
        sql = check[0]
        form = _forms.get(sql) if self.prepare and sql not in _commit_as_sql else None
        if form is not None and form.name not in self._names():
            form = None  # not prepared on this connection: the check goes as SQL
        statement = self._bound(check, form, commit=True) + "; COMMIT"
        try:
            self._simple(statement)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.errors.InvalidTextRepresentation) and NOT_CONVERGED in str(exc):
                return False
            if form is not None and isinstance(exc, psycopg.errors.InvalidSqlStatementName):
                # deallocated during perform (psycopg does so after a ROLLBACK TO
                # SAVEPOINT, and after DDL): this check commits as SQL from now on
                self._names().clear()
                _commit_as_sql.add(sql)
                raise CheckGone(form.name) from exc
            self._fail(exc, statement, (), self.cursor)
        return True

    def exists(self, check: tuple[str, dict[str, Any]]) -> bool:
        """Run a compiled check from :func:`delivery_check`: whether the key is still pending."""
        return bool(self._scalar(*check))


def try_key_lock(bind: Session | Connection, job: str, key: Sequence[Any]) -> bool:
    """Take the transaction-scoped advisory lock of (job, key); False if another holds it."""
    return DriverTx(bind).try_lock(lock_id(job, key))


def terminate_backend(engine: Engine, pid: int) -> bool:
    """End backend ``pid`` (its open transaction is rolled back, it cannot commit)."""
    with engine.connect() as conn:
        return bool(conn.execute(sa.select(sa.func.pg_terminate_backend(pid))).scalar())
