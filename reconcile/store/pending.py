"""SQL of the reconcile protocol in plain SQLAlchemy: pending-query pages, one-key
re-checks, key locks.

A job's ``pending()`` is a SELECT whose columns are its key. This module derives:

* :func:`page` -- keyset pages over that query (``ORDER BY key LIMIT n``, then
  ``WHERE (key) > (last)``), each in its own short transaction, so a pass over a
  million rows holds no long snapshot and sees rows that change under it;
* :func:`still_pending` -- the query restricted to one key (``EXISTS (SELECT 1 FROM
  (pending) WHERE key = :k)``; PostgreSQL flattens the subquery, so the restriction
  uses the same index as the page scan);
* :func:`try_key_lock` -- ``pg_try_advisory_xact_lock`` on a 64-bit hash of
  (job name, key): held until the transaction ends, never blocks;
* :func:`set_local_timeouts` -- the delivery's ``timeout`` as PostgreSQL timeouts.

These are the reference forms: the protocol as :class:`reconcile.store.delivery.SessionDelivery`
runs it with ``fast_paths = false``, and what each fast path beside them must answer
the same as. The fast paths are :mod:`reconcile.store.keyset` (pages read through the
driver), :mod:`reconcile.store.key_check` (the check compiled once per class) and
:mod:`reconcile.store.driver_tx` (the protocol's statements in two simple queries).

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
from ._tx import Bind, transaction


def key_columns(stmt: Select[Any]) -> int:
    """Number of key columns of a pending query."""
    if not isinstance(stmt, Select):
        raise PendingQueryError(f"pending() must return a SQLAlchemy Select, got {type(stmt).__name__}")
    n = len(stmt.selected_columns)
    if n == 0:
        raise PendingQueryError("pending() selects no column; its columns are the job's key")
    return n


def page(
    engine: Engine, stmt: Select[Any], after: Sequence[Any] | None, limit: int,
    upper: Sequence[Any] | None = None,
) -> list[tuple[Any, ...]]:
    """The next ``limit`` keys after ``after`` (None: from the start), in key order; with
    ``upper``, only keys up to it (inclusive): a partition's range."""
    sub = stmt.subquery("pending")
    cols = list(sub.c)
    q = sa.select(*cols).order_by(*cols).limit(limit).where(*range_conditions(cols, after, upper))
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(q)]


def range_conditions(cols: Sequence[Any], after: Sequence[Any] | None,
                     upper: Sequence[Any] | None) -> list[Any]:
    """``(key) > (after)`` and ``(key) <= (upper)``, the ones given: row-value comparisons
    in key order (what the keyset scan's ORDER BY sorts by, so an index on the key serves
    both), each value a bind parameter typed like its column."""
    def row(values: Sequence[Any]) -> Any:
        return sa.tuple_(*[sa.literal(v, c.type) for c, v in zip(cols, values, strict=True)])

    out = []
    if after is not None:
        out.append(sa.tuple_(*cols) > row(after))
    if upper is not None:
        out.append(sa.tuple_(*cols) <= row(upper))
    return out


def count_after(engine: Engine, stmt: Select[Any], after: Sequence[Any] | None,
                upper: Sequence[Any] | None = None) -> int:
    """How many keys of ``stmt`` come after ``after`` in key order (None: all of them),
    and up to ``upper`` if given (a partition's range), in one ``count(*)``: what a pass
    that stopped at ``after`` (back-pressure) leaves for the next one. PostgreSQL counts
    in the server, without sending a key."""
    sub = stmt.subquery("pending")
    cols = list(sub.c)
    q = sa.select(sa.func.count()).select_from(sub).where(*range_conditions(cols, after, upper))
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


REPLICA_LAG_SQL = """
SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN NULL
    WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
    ELSE EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())
END
"""
"""The replay lag of a standby in seconds: 0 when it has replayed all it received (an
idle primary sends nothing, and the time since the last replayed commit would read
as lag), NULL on a server that is not a standby."""


def replica_lag(engine: Engine) -> float | None:
    """How far the server behind ``engine`` is behind its primary, in seconds: None
    when it is not a standby (a primary, or a pooler in front of one)."""
    with engine.connect() as conn:
        value = conn.execute(sa.text(REPLICA_LAG_SQL)).scalar()
    return None if value is None else max(0.0, float(value))


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


def lock_id(job: str, key: Sequence[Any]) -> int:
    """Signed 64-bit advisory-lock id of (job, key)."""
    digest = hashlib.blake2b(orjson.dumps([job, list(key)]), digest_size=8).digest()
    return int(struct.unpack(">q", digest)[0])


def try_lock(bind: Session | Connection, lock: int) -> bool:
    """``pg_try_advisory_xact_lock(lock)`` in ``bind``'s transaction: False if another
    transaction holds it. Held until this transaction ends; never waits."""
    locked = sa.func.pg_try_advisory_xact_lock(sa.cast(lock, sa.BigInteger))
    return bool(bind.execute(sa.select(locked)).scalar())


def try_key_lock(bind: Session | Connection, job: str, key: Sequence[Any]) -> bool:
    """Take the transaction-scoped advisory lock of (job, key); False if another holds it."""
    return try_lock(bind, lock_id(job, key))


_LOCK_HOLDER = sa.text(
    "SELECT l.pid, extract(epoch FROM a.xact_start) FROM pg_locks l "
    "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.classid = CAST(:hi AS oid) AND l.objid = CAST(:lo AS oid) "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())")


def key_lock_holder(bind: Bind, job: str, key: Sequence[Any]) -> tuple[int, float | None] | None:
    """The backend holding the advisory lock of (job, key) -- a delivery of that key is
    running its transaction -- as (pid, transaction start in epoch seconds), or None.
    One read of ``pg_locks`` (a 64-bit lock shows as classid = high 32 bits, objid =
    low 32 bits, objsubid = 1)."""
    unsigned = lock_id(job, key) & 0xFFFFFFFFFFFFFFFF
    with transaction(bind) as conn:
        row = conn.execute(_LOCK_HOLDER, {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF}).first()
    if row is None:
        return None
    return int(row[0]), (float(row[1]) if row[1] is not None else None)


def key_is_pending(bind: Bind, stmt: Select[Any], key: Sequence[Any]) -> bool:
    """Whether ``key`` is among the rows of ``stmt`` now, in a transaction of its own
    (``reconcile key``: the operator's question, not a delivery's re-check)."""
    with transaction(bind) as conn:
        return run_check(conn, key_check(stmt, key))


def timeout_ms(seconds: float) -> int:
    """A delivery's ``timeout`` as PostgreSQL takes it: whole milliseconds, at least 1."""
    return max(1, int(seconds * 1000))


def set_local_timeouts(bind: Session | Connection, seconds: float) -> None:
    """Bound ``bind``'s transaction: ``statement_timeout`` and
    ``idle_in_transaction_session_timeout`` to ``seconds`` (:func:`timeout_ms`), for
    this transaction only (``set_config(..., true)``, i.e. ``SET LOCAL``).

    ``idle_in_transaction_session_timeout`` is the fence for a perform that hangs in
    Python: PostgreSQL ends the session, so the transaction can never commit late.
    """
    ms = str(timeout_ms(seconds))
    bind.execute(sa.select(sa.func.set_config("statement_timeout", ms, True),
                           sa.func.set_config("idle_in_transaction_session_timeout", ms, True)))


def backend_pid(bind: Session | Connection) -> int:
    """PostgreSQL backend pid of ``bind``'s connection (``pg_backend_pid()``)."""
    return int(bind.execute(sa.select(sa.func.pg_backend_pid())).scalar_one())


BACKEND_SQL = "SELECT pg_backend_pid(), (extract(epoch FROM now()) * 1000000)::bigint"
"""The server backend running this transaction, and the transaction's start in whole
microseconds since the epoch (``now()`` is the start of the transaction; it equals
``pg_stat_activity.xact_start`` of that backend while the transaction runs)."""


def backend(bind: Session | Connection) -> tuple[int, int]:
    """(pid, transaction start) of the transaction open on ``bind``: see :data:`BACKEND_SQL`."""
    pid, start = bind.execute(sa.text(BACKEND_SQL)).one()
    return int(pid), int(start)


_TERMINATE_IF_SAME_TX = sa.text(
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = :pid "
    "AND (extract(epoch FROM xact_start) * 1000000)::bigint = :start")


def terminate_backend(engine: Engine, pid: int, xact_start: int | None = None) -> bool:
    """End backend ``pid`` (its open transaction is rolled back, it cannot commit).

    With ``xact_start`` (from :func:`backend`) only while that backend still runs the
    same transaction: behind a pooler in transaction mode the server connection goes to
    another client once the delivery's transaction ends, and that client's work must
    not be ended by a watchdog that was a moment late. False if nothing was ended."""
    with engine.connect() as conn:
        if xact_start is None:
            return bool(conn.execute(sa.select(sa.func.pg_terminate_backend(pid))).scalar())
        return bool(conn.execute(_TERMINATE_IF_SAME_TX, {"pid": pid, "start": xact_start}).scalar())
