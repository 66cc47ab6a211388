"""The SQL behind the cluster-wide gauges of ``/metrics`` (:mod:`reconcile.observe.cluster`).

Each function is one short, bounded read, run at most once per scrape cache period
(a few seconds), whatever the number of scrapers:

* :func:`quarantine_counts` -- keys in ``reconcile_quarantine`` per job class (an
  index-only scan of its primary key ``(job, key)``; the table holds poison pills
  only, so it stays small);
* :func:`last_pass_times` -- when the last pass of each pass schedule finished without
  an error (a disabled pass counts: its scheduler is alive and firing), read per
  schedule from ``ix_reconcile_runs_job_started_at`` backwards (``LIMIT 1``);
* :func:`oldest_pending_age` -- reconcile lag: seconds since the oldest still-pending
  key of a class became pending, by the class's ``pending_since`` column. The query is
  ``pending()`` ordered by that column, ``LIMIT 1``, under a ``statement_timeout``
  (:data:`LAG_STATEMENT_TIMEOUT_MS`): with an index on the column (a partial index
  with ``pending()``'s condition is best, see docs/metrics.md) PostgreSQL reads one
  index entry; without one, the timeout bounds what a scrape can cost.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.sql import Select

from ..errors import PendingQueryError
from ._tx import Bind, transaction
from .tables import quarantine, runs, schedules

LAG_STATEMENT_TIMEOUT_MS = 2000
"""``statement_timeout`` of one lag query, in ms: past it the class exports no lag
sample for this scrape (logged), instead of a scrape that scans a large table."""

SINCE_LABEL = "reconcile_pending_since"


def quarantine_counts(bind: Bind) -> dict[str, int]:
    """Quarantined keys per job class (classes with none are absent)."""
    q = sa.select(quarantine.c.job, sa.func.count()).group_by(quarantine.c.job)
    with transaction(bind) as conn:
        return {job: int(n) for job, n in conn.execute(q)}


def last_pass_times(bind: Bind) -> dict[str, float]:
    """Epoch seconds at which the last pass of each pass schedule finished without an
    error; a schedule whose passes never finished well is absent."""
    r = runs
    last = (
        sa.select(sa.func.extract("epoch", r.c.finished_at))
        .where(r.c.job == schedules.c.name, r.c.finished_at.is_not(None), r.c.error.is_(None))
        .order_by(r.c.started_at.desc())
        .limit(1)
        .scalar_subquery()
    )
    q = sa.select(schedules.c.name, last).where(schedules.c.kind == "pass")
    with transaction(bind) as conn:
        return {name: float(t) for name, t in conn.execute(q) if t is not None}


def since_column(stmt: Select[Any], name: str) -> Select[Any]:
    """``stmt`` (a ``pending()`` query) reduced to one column, ``name``, labelled
    :data:`SINCE_LABEL`: a column ``stmt`` selects, else a column of a table it selects
    from. ``PendingQueryError`` names the column and what exists when there is none."""
    if not isinstance(stmt, Select):
        raise PendingQueryError(f"pending() must return a SQLAlchemy Select, got {type(stmt).__name__}")
    # .keys(): `in` on a ColumnCollection compares column objects, not names
    if name in stmt.selected_columns.keys():  # noqa: SIM118
        col: Any = stmt.selected_columns[name]
        return stmt.with_only_columns(col.label(SINCE_LABEL), maintain_column_froms=True)
    for table in stmt.get_final_froms():
        columns = getattr(table, "c", None)
        if columns is not None and name in columns.keys():  # noqa: SIM118
            return stmt.with_only_columns(columns[name].label(SINCE_LABEL), maintain_column_froms=True)
    known = sorted({c.name for t in stmt.get_final_froms() for c in getattr(t, "c", ())})
    raise PendingQueryError(
        f"pending_since = {name!r} is not a column of pending() or of the tables it selects "
        f"from (columns there: {', '.join(known) or 'none'})")


def oldest_pending_age(engine: Engine, stmt: Select[Any], name: str) -> float | None:
    """Seconds since the oldest still-pending key of ``stmt`` became pending, by its
    column ``name`` (see :func:`since_column`); None when nothing is pending. A
    ``timestamp without time zone`` column is read as UTC. The query runs under
    :data:`LAG_STATEMENT_TIMEOUT_MS` (a timeout raises, as any database error)."""
    # a subquery: PostgreSQL pulls a plain one up into the outer query, so the ORDER BY
    # ... LIMIT 1 below reads the column's index under pending()'s own WHERE; its own
    # ORDER BY is dropped (it would keep the subquery from being pulled up)
    sub = since_column(stmt, name).order_by(None).subquery("pending")
    since = sub.c[SINCE_LABEL]
    q = sa.select(since).where(since.is_not(None)).order_by(since).limit(1)
    with engine.connect() as conn, conn.begin():
        conn.execute(sa.text(f"SET LOCAL statement_timeout = {int(LAG_STATEMENT_TIMEOUT_MS)}"))
        oldest = conn.execute(q).scalar()
        now: datetime = conn.execute(sa.select(sa.func.now())).scalar_one()
    if oldest is None:
        return None
    if not isinstance(oldest, datetime):
        raise PendingQueryError(
            f"pending_since = {name!r} is not a timestamp column (it holds {type(oldest).__name__})")
    if oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return max(0.0, (now - oldest).total_seconds())
