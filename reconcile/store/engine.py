"""One pooled engine per database URL, shared by everything in the process.

``get_engine`` caches by URL, so settings rebuilt by ``configure()`` with a new
``database_url`` get a new engine on next use while the old one stays valid for its
holders until :func:`dispose_engines`. After ``fork()`` the child drops the parent's
pooled connections (without closing them under the parent) and opens its own.

Driver arguments (:func:`driver_arguments`): ``connect_timeout``,
``application_name`` and ``prepare_threshold`` come from the URL's query when it has
them, else from the settings ``database_connect_timeout``,
``database_application_name`` and ``database_prepare_threshold``.

Poolers (setting ``database_pooler``): ``store/pooler.py``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from ..config import Settings, get_settings, prepare_threshold_value
from ..errors import ProtocolViolation
from . import _psycopg_private as pg_private
from . import pooler

if TYPE_CHECKING:
    from .delivery import DeliveryTx

log = logging.getLogger("reconcile.store")

_lock = threading.Lock()
_engines: dict[str, Engine] = {}

POOL_OVERFLOW = 5
"""Connections opened beyond ``pool_size`` under a burst, then closed again."""


def pool_size(settings: Settings) -> int:
    """Pooled connections kept: one per worker thread plus two for the scheduler
    and the switch cache, and never fewer than 5."""
    return max(5, settings.concurrency + 2)


def get_engine(settings: Settings | None = None) -> Engine:
    """The engine for ``settings.database_url`` (default: the process settings).

    Created on first use with the pool size of :func:`pool_size` and a *lazy* pre-ping:
    a connection that sat idle in the pool for more than ``PING_AFTER_IDLE`` seconds is
    pinged at checkout (one dropped by a PostgreSQL restart or a proxy is replaced, not
    handed out), while one returned moments ago under load is handed out at once. That
    saves a round trip per job on the busy path that ``pool_pre_ping=True`` would spend.
    Later calls with the same URL return the same engine, whatever their other settings.
    """
    settings = settings or get_settings()
    url = settings.database_url
    engine = _engines.get(url)
    if engine is not None:
        return engine
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = make_engine(settings, pool_size=pool_size(settings), max_overflow=POOL_OVERFLOW)
            sa.event.listen(engine, "checkin", _on_checkin)
            sa.event.listen(engine, "checkout", _on_checkout)
            _engines[url] = engine
        return engine


def get_pending_engine(settings: Settings | None = None) -> Engine:
    """The engine passes scan ``pending()`` with: ``settings.pending_database_url`` (a
    read replica) when set, else :func:`get_engine`'s. Built like :func:`get_engine`'s
    (same pool, timeouts and checks), and shared the same way."""
    settings = settings or get_settings()
    if not settings.pending_database_url:
        return get_engine(settings)
    return get_engine(settings.with_overrides(database_url=settings.pending_database_url))


def driver_arguments(settings: Settings) -> tuple[sa.engine.URL, dict[str, Any]]:
    """``settings.database_url`` without ``prepare_threshold`` in its query (psycopg
    takes it as a connect() argument, not a libpq one: from the URL it was a string and
    raised ``TypeError``), and the connect arguments reconcile adds: each of
    ``connect_timeout``, ``application_name`` and ``prepare_threshold`` from the query
    if the URL has it, else from its setting (an empty ``database_application_name``
    adds none). ``prepare_threshold`` is None with ``database_pooler = transaction``."""
    url = sa.engine.make_url(settings.database_url)
    query = url.query
    args: dict[str, Any] = {}
    if "connect_timeout" not in query:
        args["connect_timeout"] = max(1, int(settings.database_connect_timeout))
    if "application_name" not in query and settings.database_application_name:
        args["application_name"] = settings.database_application_name
    raw = query.get("prepare_threshold", settings.database_prepare_threshold)
    threshold = prepare_threshold_value(raw if isinstance(raw, str) else raw[-1])
    args["prepare_threshold"] = None if settings.database_pooler == "transaction" else threshold
    return url.difference_update_query(["prepare_threshold"]), args


def make_engine(settings: Settings, **options: Any) -> Engine:
    """A new engine for ``settings.database_url`` with reconcile's driver arguments
    (:func:`driver_arguments`) and pooler handling (:func:`.pooler.watch`); ``options``
    go to ``create_engine`` (pool sizes, ``poolclass``). Not cached: see
    :func:`get_engine` for the process's shared one."""
    url, args = driver_arguments(settings)
    engine = sa.create_engine(url, connect_args=args, **options)
    pooler.watch(engine, settings.database_pooler, "options" in url.query)
    return engine


def check_connection(engine: Engine) -> None:
    """Open a connection and run ``SELECT 1``: raises SQLAlchemy's ``OperationalError``
    (server unreachable, wrong password, unknown role or database) if ``engine`` cannot
    be used. The start-up check of schedulers and of workers running ReconciledJobs."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


PING_AFTER_IDLE = 1.0
"""Seconds of idleness in the pool after which a connection is pinged at checkout."""


def _on_checkin(dbapi_conn: Any, record: Any) -> None:
    record.info["idle_since"] = time.monotonic()
    if getattr(dbapi_conn, "autocommit", False):
        # switched on for ReconciledJob deliveries (DriverTx.open_delivery); the pool
        # has already rolled back, so the connection is idle and can be switched back
        if dbapi_conn.info.transaction_status != 0:  # not IDLE: end it first
            dbapi_conn.rollback()
        dbapi_conn.autocommit = False


def _on_checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
    since = record.info.get("idle_since")
    if since is None or time.monotonic() - since < PING_AFTER_IDLE:
        return
    # One simple query through libpq, which opens no transaction (private API: the
    # shim says why psycopg's own execute() would cost the prepared key checks).
    reason = pg_private.ping(dbapi_conn)
    if reason is not None:
        # the pool discards this connection and checks out (or opens) another
        raise sa.exc.DisconnectionError(f"stale pooled connection: {reason}")


NO_COMMIT_RULE = "perform must not commit; the delivery commits after the re-check"


class DeliverySession(Session):
    """The Session of a ReconciledJob delivery (what ``perform`` receives).

    While :func:`run_perform` runs ``perform``, ``commit()``, ``rollback()`` and
    ``close()`` raise :class:`ProtocolViolation` before doing anything: a commit
    there would make the effect durable before step 4's re-check, a rollback or close
    would silently end the transaction and its advisory lock. Savepoints
    (``begin_nested()``) are fine. The framework's own commit goes through the
    transaction object of ``with session.begin()``, not these methods, so outside
    perform they behave as a Session's always do."""

    _performing = False
    _violation: ProtocolViolation | None = None

    def _refuse(self, what: str) -> None:
        if self._performing:
            exc = ProtocolViolation(f"perform called session.{what}: {NO_COMMIT_RULE}")
            self._violation = exc  # raised again after perform even if perform catches it
            raise exc

    def commit(self) -> None:
        self._refuse("commit()")
        super().commit()

    def rollback(self) -> None:
        self._refuse("rollback()")
        super().rollback()

    def close(self) -> None:
        self._refuse("close()")
        super().close()


def run_perform(session: Session, tx: DeliveryTx, perform: Callable[..., Any], args: Sequence[Any]) -> None:
    """``perform(session, *args)`` under the no-commit rule (:data:`NO_COMMIT_RULE`).

    ``session`` is the delivery's :class:`DeliverySession` inside its transaction and
    ``tx`` its delivery transaction (:class:`reconcile.store.delivery.DeliveryTx`).
    Raises :class:`ProtocolViolation` if perform called ``commit()``, ``rollback()`` or
    ``close()`` on the session (refused at the call, so nothing was committed), or if
    the transaction the delivery began is no longer the one open when perform returns:
    SQLAlchemy's connection-level transaction ended (``session.connection().commit()``)
    or the server is no longer in a transaction (a raw ``COMMIT``/``ROLLBACK``
    statement). Those last cases are seen only afterwards: what perform did before them
    may be committed, without the re-check. A ``COMMIT`` followed by more statements on
    a connection not in autocommit (psycopg then opens a new transaction) is not
    detected.
    """
    guard = session if isinstance(session, DeliverySession) else None
    conn = tx.conn  # the Session's connection, without Session.connection()'s cost
    began = conn.get_transaction()
    if guard is not None:
        guard._performing = True
        guard._violation = None  # a held Session's last delivery may have left one
    try:
        perform(session, *args)
    finally:
        if guard is not None:
            guard._performing = False
    if guard is not None and guard._violation is not None:
        exc, guard._violation = guard._violation, None
        raise exc
    if conn.get_transaction() is not began or began is None or not began.is_active:
        raise ProtocolViolation(
            f"perform ended the delivery's transaction through its connection: "
            f"{NO_COMMIT_RULE} (what it did before may be committed)")
    if not tx.server_in_transaction():
        raise ProtocolViolation(
            f"perform ended the delivery's transaction with a COMMIT or ROLLBACK statement: "
            f"{NO_COMMIT_RULE} (what it did before may be committed)")


class _Held(threading.local):
    enabled = False
    engine: Engine | None = None
    conn: Connection | None = None
    session: DeliverySession | None = None
    used_at = 0.0


_held = _Held()


@contextmanager
def holding_connections() -> Iterator[None]:
    """Within this block (an executor thread's life), :func:`delivery_session` keeps the
    thread's connection and Session between deliveries; both are released at exit."""
    _held.enabled = True
    try:
        yield
    finally:
        _held.enabled = False
        _release_held()


def _release_held() -> None:
    conn, _held.conn, _held.session, _held.engine = _held.conn, None, None, None
    if conn is not None:
        conn.close()  # back to the pool (its checkin hook runs), or discarded if invalid


@contextmanager
def delivery_session(engine: Engine) -> Iterator[Session]:
    """A :class:`DeliverySession` on ``engine`` for one ReconciledJob delivery, closed
    at exit.

    Inside :func:`holding_connections` the calling thread keeps one pooled connection
    checked out and one Session bound to it across deliveries: the pool's checkout and
    checkin and a new Session cost more Python time per delivery than the protocol's
    own statements. The connection goes back to the pool, and is checked out again
    (so pinged, see :data:`PING_AFTER_IDLE`), after that long without a delivery, when
    it was invalidated, or for another engine. Elsewhere: a new Session per call.
    """
    if not _held.enabled:
        with DeliverySession(engine, expire_on_commit=False) as session:
            yield session
        return
    now = time.monotonic()
    conn = _held.conn
    stale = now - _held.used_at >= PING_AFTER_IDLE
    if conn is not None and (_held.engine is not engine or conn.invalidated or conn.closed or stale):
        _release_held()
        conn = None
    if conn is None or _held.session is None:
        conn = _held.conn = engine.connect()
        _held.engine = engine
        held = _held.session = DeliverySession(bind=conn, expire_on_commit=False)
    else:
        held = _held.session
        if conn.in_transaction():
            conn.rollback()  # a delivery left it open (it never commits one it did not finish)
    try:
        yield held
    finally:
        held.close()  # forgets the delivery's objects; the connection stays open
        _held.used_at = time.monotonic()


def dispose_engines() -> None:
    """Close every cached engine's pooled connections and forget the engines."""
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.dispose()


def _after_fork_in_child() -> None:
    global _lock
    # Another thread may have held the lock at fork time; it will never release it here.
    _lock = threading.Lock()
    # A pooled connection's socket is shared with the parent after fork; using it in
    # both corrupts the protocol stream. close=False leaves the parent's sockets alone.
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
