"""One pooled engine per database URL, shared by everything in the process.

``get_engine`` caches by URL, so settings rebuilt by ``configure()`` with a new
``database_url`` get a new engine on next use while the old one stays valid for its
holders until :func:`dispose_engines`. After ``fork()`` the child drops the parent's
pooled connections (without closing them under the parent) and opens its own.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..config import Settings, get_settings

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
            engine = sa.create_engine(
                url,
                connect_args={"connect_timeout": max(1, int(settings.database_connect_timeout))},
                pool_size=pool_size(settings),
                max_overflow=POOL_OVERFLOW,
            )
            sa.event.listen(engine, "checkin", _on_checkin)
            sa.event.listen(engine, "checkout", _on_checkout)
            _engines[url] = engine
        return engine


PING_AFTER_IDLE = 1.0
"""Seconds of idleness in the pool after which a connection is pinged at checkout."""


def _on_checkin(dbapi_conn: Any, record: Any) -> None:
    record.info["idle_since"] = time.monotonic()
    if getattr(dbapi_conn, "autocommit", False):
        # switched on for one ReconciledJob delivery (DriverTx.open_delivery); the pool
        # has already rolled back, so the connection is idle and can be switched back
        if dbapi_conn.info.transaction_status != 0:  # not IDLE: end it first
            dbapi_conn.rollback()
        dbapi_conn.autocommit = False


def _on_checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
    since = record.info.get("idle_since")
    if since is None or time.monotonic() - since < PING_AFTER_IDLE:
        return
    try:
        # psycopg 3: a protocol-level sync round trip, no transaction opened
        dbapi_conn.execute("SELECT 1")
        dbapi_conn.rollback()
    except Exception as exc:
        # the pool discards this connection and checks out (or opens) another
        raise sa.exc.DisconnectionError(f"stale pooled connection: {exc}") from exc


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
