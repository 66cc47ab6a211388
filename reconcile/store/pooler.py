"""What an engine knows of a connection pooler (PgBouncer) between it and PostgreSQL.

Setting ``database_pooler`` (:func:`pooler_mode`): in ``transaction`` mode
every connection gets ``prepare_threshold = None`` (psycopg prepares nothing: a
statement prepared on one server connection is unknown, or another client's, on the
next) and the key checks are not prepared either. With ``none`` the first connection
of an engine compares ``SELECT pg_backend_pid()`` with the pid libpq reports (PgBouncer
reports a made-up one); if they differ, the engine is treated as ``transaction`` from
then on and one warning names the setting. Connections opened before that answer
(only the first one waits for it) get the threshold set on them when they connect.

:func:`watch` installs this on an engine made by ``engine.make_engine``.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..config import OPTIONS_UNDER_POOLER
from ..errors import ConfigError
from . import _psycopg_private as pg_private

log = logging.getLogger("reconcile.store")


def watch(engine: Engine, mode: str, has_options: bool) -> None:
    """Give ``engine`` pooler handling for the setting ``mode`` (``none``: detect on the
    first connection); ``has_options``: its URL carries ``options``, which PgBouncer
    refuses (the refusal becomes a :class:`ConfigError` naming the alternative)."""
    pooling = _modes[engine] = _Pooling(mode, has_options)
    sa.event.listen(engine, "connect", functools.partial(_on_connect, pooling))
    if has_options:
        sa.event.listen(engine, "do_connect", _connect_naming_options)


def _connect_naming_options(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
    """Connect; PgBouncer's refusal of the URL's ``options`` becomes a ConfigError
    that names the alternative (PgBouncer answers ``unsupported startup parameter``)."""
    try:
        return dialect.connect(*cargs, **cparams)
    except Exception as exc:
        if "unsupported startup parameter: options" not in str(exc):
            raise
        raise ConfigError(f"database_url {OPTIONS_UNDER_POOLER} (the server answered: "
                          "unsupported startup parameter: options)") from None


class _Pooling:
    """What an engine knows of the pooler in front of its server (see the module
    docstring): ``mode`` is the setting until the first connection's check upgrades a
    ``none`` to ``transaction``."""

    def __init__(self, mode: str, has_options: bool) -> None:
        self.mode = mode
        self.detected = False
        self.checked = mode != "none"  # a configured pooler is trusted, not probed
        self.has_options = has_options
        self.lock = threading.Lock()


_modes: weakref.WeakKeyDictionary[Engine, _Pooling] = weakref.WeakKeyDictionary()

SERVER_PID_SQL = b"SELECT pg_backend_pid()"
"""The server's own pid of a connection; libpq's differs behind a pooler."""

SERVER_PID = "reconcile.server_pid"
"""Key of a connection's server pid in its pool record's info (session mode)."""


def pooler_mode(engine: Engine) -> str:
    """``none``, ``session`` or ``transaction``: the engine's ``database_pooler``, or
    ``transaction`` once its first connection showed a pooler in between. An engine
    not made by :func:`make_engine` is ``none``."""
    pooling = _modes.get(engine)
    return "none" if pooling is None else pooling.mode


def _server_pid(dbapi_conn: Any) -> int:
    result = pg_private.exec_simple(dbapi_conn, SERVER_PID_SQL, "utf-8")
    return int(result.get_value(0, 0) or b"0")


def _on_connect(pooling: _Pooling, dbapi_conn: Any, record: Any) -> None:
    if not pooling.checked:
        with pooling.lock:
            if not pooling.checked:
                _detect(pooling, dbapi_conn)
    if pooling.mode == "transaction":
        dbapi_conn.prepare_threshold = None
    elif pooling.mode == "session":
        record.info[SERVER_PID] = _server_pid(dbapi_conn)


def _detect(pooling: _Pooling, dbapi_conn: Any) -> None:
    server = _server_pid(dbapi_conn)
    client = int(dbapi_conn.info.backend_pid)
    if server == client:
        pooling.checked = True
        return
    if pooling.has_options:
        # left unchecked: every connection of this engine fails the same way
        raise ConfigError(f"database_url {OPTIONS_UNDER_POOLER} (a pooler was detected: the "
                          f"server's backend pid {server} is not the {client} libpq reports)")
    pooling.mode, pooling.detected, pooling.checked = "transaction", True, True
    log.warning(
        "a connection pooler is between reconcile and PostgreSQL (the server's backend pid "
        "%s is not the %s libpq reports): acting as database_pooler = transaction (no "
        "prepared statements; the watchdog reads pg_backend_pid() inside each delivery's "
        "transaction). Set database_pooler (RECONCILE_DATABASE_POOLER) to session or "
        "transaction to say so and skip this check", server, client)
