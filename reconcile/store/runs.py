"""History of reconcile passes: one row per pass, with its counts.

A row is written when a pass starts (so a pass that never finishes, because its
scheduler died, is visible with ``finished_at`` NULL) and completed when it ends.
Times come from the database clock (``clock_timestamp()``, so that two calls in one
transaction still measure the time between them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import sqlalchemy as sa

from ._tx import Bind, transaction
from .tables import runs as r

TRIGGERS: Final = frozenset({"tick", "manual", "redis_loss", "flush", "startup"})
"""Why a pass ran: its schedule's tick, an operator's request, a detected Redis loss,
``reconcile flush``, or scheduler start-up."""


@dataclass(frozen=True)
class Run:
    """One row of ``reconcile_runs``; counts are 0 and ``finished_at`` None until finished.
    ``partition_index`` of ``partition_count``: the key range of a partitioned pass."""

    id: int
    job: str
    trigger: str
    scheduler: str
    started_at: datetime
    finished_at: datetime | None
    found: int
    enqueued: int
    already_queued: int
    quarantined: int
    deferred: int
    replica_lag_ms: int | None
    partition_index: int | None
    partition_count: int | None
    disabled: bool
    error: str | None
    duration_ms: int | None

    @property
    def name(self) -> str:
        """The job, with ``#i/N`` for a partition's pass (like its schedule row, but
        partition 0 shows as ``#0/N`` too)."""
        if self.partition_index is None or self.partition_count is None:
            return self.job
        return f"{self.job}#{self.partition_index}/{self.partition_count}"


def start_run(bind: Bind, job: str, trigger: str, scheduler: str,
              partition: tuple[int, int] | None = None) -> int:
    """Record the start of a pass of ``job`` by ``scheduler`` (its owner id); returns the
    run id. ``trigger`` is one of :data:`TRIGGERS` (ValueError otherwise); ``partition``
    (index, count) is the key range of a partitioned pass (None: every key)."""
    if trigger not in TRIGGERS:
        raise ValueError(f"unknown run trigger {trigger!r}; expected one of {sorted(TRIGGERS)}")
    with transaction(bind) as conn:
        return conn.execute(  # type: ignore[no-any-return]
            sa.insert(r)
            .values(job=job, trigger=trigger, scheduler=scheduler,
                    started_at=sa.func.clock_timestamp(),
                    partition_index=None if partition is None else partition[0],
                    partition_count=None if partition is None else partition[1])
            .returning(r.c.id)
        ).scalar_one()


def finish_run(
    bind: Bind,
    run_id: int,
    *,
    found: int = 0,
    enqueued: int = 0,
    already_queued: int = 0,
    quarantined: int = 0,
    deferred: int = 0,
    replica_lag_ms: int | None = None,
    disabled: bool = False,
    error: str | None = None,
) -> None:
    """Complete run ``run_id`` with its counts, ``finished_at`` and ``duration_ms``.

    ``found`` keys were pending, ``enqueued`` of them pushed, ``already_queued`` skipped
    by their uniqueness lock, ``quarantined`` dropped, ``deferred`` left for the next pass
(back-pressure: the class's backlog was above its high water), ``replica_lag_ms`` the
lag of the read replica the pass scanned (None: it read the primary); ``disabled`` means the job's kill
    switch stopped the pass; ``error`` is the failure that ended it, if any.
    """
    finished = sa.func.clock_timestamp()
    elapsed_ms = sa.func.extract("epoch", finished - r.c.started_at) * 1000
    with transaction(bind) as conn:
        conn.execute(
            sa.update(r)
            .where(r.c.id == run_id)
            .values(
                finished_at=finished,
                duration_ms=sa.cast(sa.func.round(elapsed_ms), sa.Integer),
                found=found,
                enqueued=enqueued,
                already_queued=already_queued,
                quarantined=quarantined,
                deferred=deferred,
                replica_lag_ms=replica_lag_ms,
                disabled=disabled,
                error=error,
            )
        )


def recent_runs(bind: Bind, job: str | None = None, limit: int = 20) -> list[Run]:
    """The latest ``limit`` runs (of ``job``, or of every job), newest first."""
    query = sa.select(r).order_by(r.c.started_at.desc(), r.c.id.desc()).limit(limit)
    if job is not None:
        query = query.where(r.c.job == job)
    with transaction(bind) as conn:
        rows = conn.execute(query).mappings().all()
    return [Run(**row) for row in rows]


def last_runs(bind: Bind) -> dict[str, Run]:
    """The latest run of each job (the highest id: ids grow with each start):
    ``reconcile status``'s per-class "last pass"."""
    query = sa.select(r).where(r.c.id.in_(sa.select(sa.func.max(r.c.id)).group_by(r.c.job)))
    with transaction(bind) as conn:
        rows = conn.execute(query).mappings().all()
    return {row["job"]: Run(**row) for row in rows}


def prune_runs(bind: Bind, older_than: timedelta) -> int:
    """Delete runs started more than ``older_than`` ago (database clock); returns how
    many. The history grows by one row per pass, so schedulers should call this now
    and then."""
    with transaction(bind) as conn:
        return conn.execute(
            sa.delete(r).where(r.c.started_at < sa.func.now() - older_than)
        ).rowcount
