"""SQL of the reconcile protocol: pending-query pages, one-key re-checks, key locks.

A job's ``pending()`` is a SELECT whose columns are its key. This module derives:

* :func:`page` -- keyset pages over that query (``ORDER BY key LIMIT n``, then
  ``WHERE (key) > (last)``), each in its own short transaction, so a pass over a
  million rows holds no long snapshot and sees rows that change under it;
* :func:`still_pending` -- the query restricted to one key (``EXISTS (SELECT 1 FROM
  (pending) WHERE key = :k)``; PostgreSQL flattens the subquery, so the restriction
  uses the same index as the page scan);
* :func:`try_key_lock` -- ``pg_try_advisory_xact_lock`` on a 64-bit hash of
  (job name, key): held until the transaction ends, never blocks.

Key columns must be NOT NULL and sortable (NULL keys cannot be paged by keyset).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

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


def key_check(stmt: Select[Any], key: Sequence[Any]) -> Select[Any]:
    """``SELECT EXISTS (SELECT 1 FROM (stmt) WHERE key columns = key)``."""
    sub = stmt.subquery("pending")
    cols = list(sub.c)
    if len(cols) != len(key):
        raise PendingQueryError(f"key {list(key)!r} has {len(key)} values, pending() selects {len(cols)}")
    cond = sa.and_(*[c == sa.literal(v, c.type) for c, v in zip(cols, key, strict=True)])
    return sa.select(sa.exists(sa.select(sa.literal(1)).select_from(sub).where(cond)))


def run_check(bind: Session | Connection, check: Select[Any]) -> bool:
    """Run a :func:`key_check` in ``bind``'s transaction."""
    return bool(bind.execute(check).scalar())


def still_pending(bind: Session | Connection, stmt: Select[Any], key: Sequence[Any]) -> bool:
    """Whether ``key`` is among the rows of ``stmt``, seen by ``bind``'s transaction."""
    return run_check(bind, key_check(stmt, key))


def lock_id(job: str, key: Sequence[Any]) -> int:
    """Signed 64-bit advisory-lock id of (job, key)."""
    digest = hashlib.blake2b(orjson.dumps([job, list(key)]), digest_size=8).digest()
    return int(struct.unpack(">q", digest)[0])


def try_key_lock(bind: Session | Connection, job: str, key: Sequence[Any]) -> bool:
    """Take the transaction-scoped advisory lock of (job, key); False if another holds it."""
    q = sa.select(sa.func.pg_try_advisory_xact_lock(lock_id(job, key)))
    return bool(bind.execute(q).scalar())


def set_local_timeouts(bind: Session | Connection, seconds: float) -> None:
    """Bound this transaction: any statement, and any idle time inside it, to ``seconds``.

    ``idle_in_transaction_session_timeout`` is the fence for a perform that hangs in
    Python: PostgreSQL ends the session, so the transaction can never commit late.
    """
    ms = max(1, int(seconds * 1000))
    bind.execute(sa.text(f"SET LOCAL statement_timeout = {ms}"))
    bind.execute(sa.text(f"SET LOCAL idle_in_transaction_session_timeout = {ms}"))


def backend_pid(session: Session) -> int:
    """PostgreSQL backend pid of the session's connection (no round trip)."""
    driver = session.connection().connection.driver_connection
    return int(driver.info.backend_pid)  # type: ignore[union-attr]


def terminate_backend(engine: Engine, pid: int) -> bool:
    """End backend ``pid`` (its open transaction is rolled back, it cannot commit)."""
    with engine.connect() as conn:
        return bool(conn.execute(sa.select(sa.func.pg_terminate_backend(pid))).scalar())
