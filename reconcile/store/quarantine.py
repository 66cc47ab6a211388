"""Quarantine: keys of ReconciledJobs that a reconcile pass must not enqueue again.

A key lands here when its job exhausted its retries or kept killing workers; without
this, the next pass would find it still pending and resurrect the poison pill. It
stays until an operator releases it. Keys are stored as JSON arrays (``[42]``,
``[7, "eu"]``), so their values must be JSON-native (str, int, float, bool, None):
the caller converts UUIDs, dates and decimals the same way for :func:`add`,
:func:`keys`, :func:`release` and :func:`is_quarantined`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection

from ._tx import Bind, transaction
from .tables import quarantine as q


@dataclass(frozen=True)
class Entry:
    """One quarantined key; ``key`` is a tuple, ``payload`` the last failed job's payload."""

    job: str
    key: tuple[Any, ...]
    reason: str
    error_class: str | None
    error_message: str | None
    payload: dict[str, Any] | None
    quarantined_at: datetime


def add(
    bind: Bind,
    job: str,
    key: Sequence[Any],
    reason: str,
    error_class: str | None = None,
    error_message: str | None = None,
    payload: Mapping[str, Any] | None = None,
) -> None:
    """Quarantine ``key`` of ``job``. If it already is, the latest failure wins: reason,
    error, payload and ``quarantined_at`` are replaced."""
    row = {
        "job": job,
        "key": list(key),
        "reason": reason,
        "error_class": error_class,
        "error_message": error_message,
        "payload": dict(payload) if payload is not None else None,
    }
    stmt = insert(q).values(row)
    stmt = stmt.on_conflict_do_update(
        index_elements=[q.c.job, q.c.key],
        set_={
            "reason": stmt.excluded.reason,
            "error_class": stmt.excluded.error_class,
            "error_message": stmt.excluded.error_message,
            "payload": stmt.excluded.payload,
            "quarantined_at": sa.func.now(),
        },
    )
    with transaction(bind) as conn:
        conn.execute(stmt)


def keys(bind: Bind, job: str) -> set[tuple[Any, ...]]:
    """Every quarantined key of ``job``, as tuples, to drop them from a pass."""
    with transaction(bind) as conn:
        return {tuple(key) for key in conn.execute(sa.select(q.c.key).where(q.c.job == job))
                .scalars()}


def is_quarantined(conn: Connection, job: str, key: Sequence[Any]) -> bool:
    """Whether ``key`` of ``job`` is quarantined, read in the caller's transaction."""
    found = conn.execute(
        sa.select(sa.literal(1)).where(q.c.job == job, q.c.key == sa.cast(list(key), q.c.key.type))
    ).first()
    return found is not None


def entry(bind: Bind, job: str, key: Sequence[Any]) -> Entry | None:
    """The quarantine entry of ``key`` of ``job``, or None (``reconcile key``)."""
    query = sa.select(q).where(q.c.job == job, q.c.key == sa.cast(list(key), q.c.key.type))
    with transaction(bind) as conn:
        row = conn.execute(query).mappings().first()
    return None if row is None else Entry(**{**row, "key": tuple(row["key"])})


def counts(bind: Bind) -> dict[str, int]:
    """Quarantined keys per job (jobs with none are absent)."""
    with transaction(bind) as conn:
        rows = conn.execute(sa.select(q.c.job, sa.func.count()).group_by(q.c.job)).all()
    return {job: int(n) for job, n in rows}


def list_entries(bind: Bind, job: str | None = None) -> list[Entry]:
    """Quarantined keys (of ``job``, or of every job), newest first."""
    query = sa.select(q).order_by(q.c.quarantined_at.desc(), q.c.job)
    if job is not None:
        query = query.where(q.c.job == job)
    with transaction(bind) as conn:
        rows = conn.execute(query).mappings().all()
    return [Entry(**{**row, "key": tuple(row["key"])}) for row in rows]


def release(bind: Bind, job: str, keys: Iterable[Sequence[Any]]) -> int:
    """Release ``keys`` of ``job`` (the next pass enqueues them if still pending);
    returns how many were quarantined."""
    wanted = [list(key) for key in keys]
    if not wanted:
        return 0
    with transaction(bind) as conn:
        return conn.execute(
            sa.delete(q).where(q.c.job == job, q.c.key.in_(wanted))
        ).rowcount


def release_returning(bind: Bind, job: str | None, keys: Iterable[Sequence[Any]] | None) -> list[Entry]:
    """Release ``keys`` of ``job`` (None: every key of ``job``; ``job`` None too: every
    key) and return the entries released (``DELETE ... RETURNING``), so that their
    dead records can be removed with them."""
    stmt = sa.delete(q)
    if job is not None:
        stmt = stmt.where(q.c.job == job)
    if keys is not None:
        wanted = [list(key) for key in keys]
        if not wanted:
            return []
        stmt = stmt.where(q.c.key.in_(wanted))
    with transaction(bind) as conn:
        rows = conn.execute(stmt.returning(*q.c)).mappings().all()
    return [Entry(**{**row, "key": tuple(row["key"])}) for row in rows]


def release_all(bind: Bind, job: str | None = None) -> int:
    """Release every key of ``job``, or of every job; returns how many."""
    stmt = sa.delete(q)
    if job is not None:
        stmt = stmt.where(q.c.job == job)
    with transaction(bind) as conn:
        return conn.execute(stmt).rowcount
