"""The protocol's own statements on the psycopg connection of a delivery: the fast path.

:class:`DriverTx` runs steps 1 and 2 in one simple query (:meth:`DriverTx.open_delivery`)
and steps 4 and 5 in another (:meth:`DriverTx.commit_if_converged`), on the driver
connection under the delivery's Session, skipping SQLAlchemy's statement machinery.
The worker reaches it through :class:`reconcile.store.delivery.DriverDelivery`; the
reference it must agree with is :class:`reconcile.store.delivery.SessionDelivery`
(plain SQLAlchemy, one statement per step), run instead with ``fast_paths = false``.

The prepared-statement text and bookkeeping are in
:mod:`reconcile.store.prepared` and the checks in :mod:`reconcile.store.key_check`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import psycopg
from psycopg import pq
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from ..errors import CheckGone
from . import _psycopg_private as pg_private
from . import _sqlalchemy_private as sa_private
from . import prepared
from .pending import BACKEND_SQL, timeout_ms
from .pooler import SERVER_PID
from .prepared import NOT_CONVERGED, PreparedCheck, not_converged_cast, prepared_form

log = logging.getLogger("reconcile.store")

LOCK_SQL = "SELECT pg_try_advisory_xact_lock(%s::bigint)"


def timeouts_sql(seconds: float) -> str:
    """:func:`reconcile.store.pending.set_local_timeouts` as one SQL string (the
    milliseconds inlined: an integer made here)."""
    ms = timeout_ms(seconds)
    return (f"SELECT set_config('statement_timeout', '{ms}', true), "
            f"set_config('idle_in_transaction_session_timeout', '{ms}', true)")


_CURSOR = "reconcile.cursor"
_C = TypeVar("_C", psycopg.Cursor[Any], psycopg.ClientCursor[Any])
_V = TypeVar("_V")
_CLIENT_CURSOR = "reconcile.client_cursor"
_PREPARED = "reconcile.prepared"
_ENCODING = "reconcile.encoding"
LOCK_BUSY = "reconcile: the lock of the key is held by another transaction"
"""Marker of the failed cast that ends step 1 when the key's lock is taken."""


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
        self.prepare = prepare and not prepared.switched_off
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
        """Hand a failed statement to SQLAlchemy's own handling: it raises the wrapped
        ``DBAPIError`` and invalidates a lost connection (see the shim's figures)."""
        sa_private.raise_dbapi_error(self.conn, exc, statement, params, cursor)

    def _scalar(self, statement: str, params: Sequence[Any] | dict[str, Any]) -> Any:
        try:
            self.cursor.execute(statement, params)
            row = self.cursor.fetchone()
        except psycopg.Error as exc:
            self._fail(exc, statement, params, self.cursor)
        return None if row is None else row[0]

    @property
    def backend_pid(self) -> int:
        """The backend pid libpq reports for this connection (no round trip): the
        server's directly, a pooler's own behind one (see :meth:`backend`)."""
        return int(self.cursor.connection.info.backend_pid)

    def backend(self, pooler: str) -> tuple[int, int | None]:
        """(server pid, transaction start or None) of the open transaction, for the
        watchdog (:meth:`reconcile.store.delivery.DeliveryTx.backend` says which
        ``pooler`` costs what)."""
        if pooler == "transaction":
            try:
                result = self._simple(BACKEND_SQL)
            except psycopg.Error as exc:
                self._fail(exc, BACKEND_SQL, (), self.cursor)
            return int(result.get_value(0, 0) or b"0"), int(result.get_value(0, 1) or b"0")
        if pooler == "session":
            pid = self.conn.connection.info.get(SERVER_PID)
            if pid:
                return int(pid), None
        return self.backend_pid, None

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
        return the result of its last statement, through libpq's ``PQexec`` instead
        of a cursor (:func:`reconcile.store._psycopg_private.exec_simple`, which says
        what that saves). PostgreSQL stops at the first error, raised as psycopg
        raises it (a lost connection: ``OperationalError``)."""
        encoding = self._encoding()
        return pg_private.exec_simple(self.cursor.connection, statement.encode(encoding), encoding)

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
        if sql in prepared.unpreparable:
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
            prepared.unpreparable.add(sql)
            log.info("key check not prepared (%s); it is sent as SQL: %s", str(exc).strip(), sql)
            return None
        names.add(form.name)
        return form

    @staticmethod
    def _prepared_off(reason: str) -> None:
        if not prepared.switched_off:
            prepared.switched_off.append(reason)
            log.warning("prepared key checks switched off in this process: %s (behind a pooler in "
                        "transaction mode, set database_pooler = transaction)", reason)

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
        form = prepared.known(sql) if self.prepare and sql not in prepared.commit_as_sql else None
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
                prepared.commit_as_sql.add(sql)
                raise CheckGone(form.name) from exc
            self._fail(exc, statement, (), self.cursor)
        return True

    def exists(self, check: tuple[str, dict[str, Any]]) -> bool:
        """Run a compiled check from :func:`delivery_check`: whether the key is still pending."""
        return bool(self._scalar(*check))

