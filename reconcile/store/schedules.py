"""Schedules: when each reconcile pass and cron entry fires next, claimed atomically.

Contract:

* Every tick of a schedule is claimed by exactly one caller of :func:`claim_due`,
  however many scheduler processes call it at once: due rows are read
  ``FOR UPDATE SKIP LOCKED`` and advanced in the same transaction, so a concurrent
  caller either skips a row another holds or, after that one commits, sees it no
  longer due.
* Only the database clock decides what is due (``now()``, the start of the claiming
  transaction). Scheduler hosts may disagree about the time; they cannot double-fire
  or skip a tick.
* A claimed schedule is *running* until :func:`finish`; it is not claimed again
  meanwhile (a pass never overlaps itself), unless its claim is older than
  ``stale_after`` (its scheduler died). Ticks that fall due while it runs fire once
  when it finishes, not once each.

Times handed in (``next_after`` and ``first_run_at`` results) must be timezone-aware.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from ._tx import Bind, transaction
from .tables import schedules as s

NextAfter = Callable[[str, datetime, datetime], datetime]
"""``next_after(name, scheduled_for, db_now)``: the following fire time of ``name``.

Return a time after ``db_now`` to skip ticks missed while no scheduler ran (the usual
choice), or after ``scheduled_for`` only to catch each missed tick up in turn."""


@dataclass(frozen=True)
class ScheduleSpec:
    """What a schedule should be: ``kind`` is ``'pass'`` or ``'cron'``, ``spec`` a human
    readable description (``every 60s``); ``first_run_at(db_now)`` gives the first fire
    time of a new schedule, or of one whose ``spec`` or ``kind`` changed."""

    name: str
    kind: str
    spec: str
    first_run_at: Callable[[datetime], datetime]


@dataclass(frozen=True)
class Claim:
    """One claimed tick: the schedule, the time it was due, and the database's ``now()``."""

    name: str
    kind: str
    scheduled_for: datetime
    db_now: datetime


@dataclass(frozen=True)
class Schedule:
    """One row of ``reconcile_schedules``. ``updated_at`` is when its spec last changed."""

    name: str
    kind: str
    spec: str
    next_run_at: datetime
    running_owner: str | None
    running_since: datetime | None
    last_started_at: datetime | None
    last_finished_at: datetime | None
    updated_at: datetime
    bounds: list[list[object]] | None = None
    """Partition 0's row of a partitioned pass: the key bounds in force (store/partitions.py)."""
    bounds_gen: int = 0
    scanned_gen: int | None = None
    """The bounds generation this partition's last completed pass scanned."""
    scanned_keys: int | None = None


def _aware(value: datetime, what: str) -> datetime:
    # A naive datetime would be read in the session's TimeZone: a silent shift.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {value!r}")
    return value


def database_now(bind: Bind) -> datetime:
    """The database clock (``now()``), the only clock schedules go by."""
    with transaction(bind) as conn:
        now: datetime = conn.execute(sa.select(sa.func.now())).scalar_one()
        return now


def ensure(bind: Bind, specs: Sequence[ScheduleSpec]) -> list[str]:
    """Create missing schedules and update those whose ``spec`` or ``kind`` changed.

    New and changed rows get ``next_run_at = first_run_at(db_now)``; unchanged rows keep
    their next tick and running state; rows of names not in ``specs`` are left alone.
    A changed row also drops its partition bounds (a new partition count needs new
    ones; the next pass computes them).
    Returns the names inserted or updated. Names in ``specs`` must be distinct.
    """
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate schedule names in {sorted(names)}")
    if not specs:
        return []
    with transaction(bind) as conn:
        db_now = conn.execute(sa.select(sa.func.now())).scalar_one()
        rows = [
            {
                "name": spec.name,
                "kind": spec.kind,
                "spec": spec.spec,
                "next_run_at": _aware(spec.first_run_at(db_now), f"first_run_at of {spec.name}"),
            }
            for spec in specs
        ]
        stmt = insert(s).values(rows)
        upsert = stmt.on_conflict_do_update(
            index_elements=[s.c.name],
            set_={
                "kind": stmt.excluded.kind,
                "spec": stmt.excluded.spec,
                "next_run_at": stmt.excluded.next_run_at,
                "updated_at": sa.func.now(),
                "bounds": None,
            },
            where=sa.or_(
                s.c.spec.is_distinct_from(stmt.excluded.spec),
                s.c.kind.is_distinct_from(stmt.excluded.kind),
            ),
        ).returning(s.c.name)
        return list(conn.execute(upsert).scalars())


def claim_due(
    bind: Bind,
    owner: str,
    names: Iterable[str],
    next_after: NextAfter,
    stale_after: timedelta,
    specs: Mapping[str, str] | None = None,
    groups: Mapping[str, str] | None = None,
    group_limits: Mapping[str, int] | None = None,
) -> list[Claim]:
    """Claim every due tick among ``names`` for ``owner``, oldest first.

    With ``groups`` (name to a group: the partition rows of one class), at most
    ``group_limits[group]`` due rows of each group (default 1) are claimed per call,
    the oldest; the others stay due, for other schedulers (or this one's next call),
    so schedulers share a partitioned pass instead of the first one claiming every
    partition. A grouped row is locked only once it is chosen (rows are tried one at
    a time, ``SKIP LOCKED``), so a concurrent caller can claim the group's others.

    With ``specs`` (name to the caller's own spec), only rows whose ``spec`` is the
    caller's are claimed: a scheduler never fires a schedule by a definition that is not
    the one in force (see ``docs/scheduler.md``, "Changing a schedule").

    Due means ``next_run_at <= now()`` and not running, or running for longer than
    ``stale_after``. Each claimed row gets ``next_run_at = next_after(name,
    scheduled_for, db_now)`` (which must be later than ``scheduled_for``), and
    ``running_owner = owner``, ``running_since = last_started_at = now()``, all in one
    transaction. Pass an :class:`Engine` so that the claim commits at once: rows stay
    locked until it does.
    """
    wanted = sorted(set(names))
    if not wanted:
        return []
    now = sa.func.now()
    groups = groups or {}

    def due(among: list[str], lock: bool) -> Any:
        q = (
            sa.select(s.c.name, s.c.kind, s.c.next_run_at, now)
            .where(
                s.c.name.in_(among),
                sa.tuple_(s.c.name, s.c.spec).in_([(n, specs[n]) for n in among])
                if specs is not None else sa.true(),
                s.c.next_run_at <= now,
                sa.or_(s.c.running_owner.is_(None), s.c.running_since < now - stale_after),
            )
            .order_by(s.c.next_run_at, s.c.name)
        )
        return q.with_for_update(skip_locked=True) if lock else q

    with transaction(bind) as conn:
        single = [n for n in wanted if n not in groups]
        rows = list(conn.execute(due(single, True)).all()) if single else []
        grouped = [n for n in wanted if n in groups]
        if grouped:
            # Up to a limit per group: the candidates are read without a lock, then
            # locked one at a time (SKIP LOCKED) until the limit is had, so the group's
            # other rows stay free for a scheduler claiming at the same moment.
            limits = group_limits or {}
            taken: dict[str, int] = {}
            for cand in conn.execute(due(grouped, False)).all():
                group = groups[cand.name]
                if taken.get(group, 0) >= limits.get(group, 1):
                    continue
                got = conn.execute(due([cand.name], True)).first()
                if got is not None:
                    taken[group] = taken.get(group, 0) + 1
                    rows.append(got)
        if not rows:
            return []
        claims: list[Claim] = []
        updates: list[dict[str, object]] = []
        for name, kind, due_at, db_now in sorted(rows, key=lambda r: (r[2], r[0])):
            following = _aware(next_after(name, due_at, db_now), f"next_after of {name}")
            if following <= due_at:
                raise ValueError(
                    f"next_after of {name} returned {following}, not after the tick {due_at}"
                )
            claims.append(Claim(name=name, kind=kind, scheduled_for=due_at, db_now=db_now))
            updates.append({"b_name": name, "b_next": following})
        conn.execute(
            sa.update(s)
            .where(s.c.name == sa.bindparam("b_name"))
            .values(
                next_run_at=sa.bindparam("b_next"),
                running_owner=owner,
                running_since=now,
                last_started_at=now,
            ),
            updates,
        )
        return claims


def finish(bind: Bind, name: str, owner: str) -> bool:
    """End ``owner``'s run of ``name``: clear the running claim, set ``last_finished_at``.

    Returns False (and changes nothing) if the claim is no longer ``owner``'s, because
    another scheduler took it over as stale.
    """
    with transaction(bind) as conn:
        result = conn.execute(
            sa.update(s)
            .where(s.c.name == name, s.c.running_owner == owner)
            .values(running_owner=None, running_since=None, last_finished_at=sa.func.now())
        )
        return result.rowcount > 0


def keep_running(bind: Bind, name: str, owner: str) -> bool:
    """Refresh ``owner``'s running claim on ``name`` (``running_since = now()``), so that
    a pass longer than ``stale_after`` is not taken over. False if the claim is gone."""
    with transaction(bind) as conn:
        result = conn.execute(
            sa.update(s)
            .where(s.c.name == name, s.c.running_owner == owner)
            .values(running_since=sa.func.now())
        )
        return result.rowcount > 0


def trigger_now(bind: Bind, names: Iterable[str] | None = None) -> int:
    """Make schedules due at once (``next_run_at = now()`` unless already earlier):
    all of them, or only ``names``. Used after a Redis loss or a flush. Running
    schedules fire as soon as they finish. Returns the rows touched."""
    stmt = sa.update(s).values(next_run_at=sa.func.least(s.c.next_run_at, sa.func.now()))
    if names is not None:
        wanted = sorted(set(names))
        if not wanted:
            return 0
        stmt = stmt.where(s.c.name.in_(wanted))
    with transaction(bind) as conn:
        return conn.execute(stmt).rowcount


def remove(bind: Bind, names: Iterable[str]) -> int:
    """Delete the schedules ``names`` (jobs that no longer exist). Returns rows deleted."""
    wanted = sorted(set(names))
    if not wanted:
        return 0
    with transaction(bind) as conn:
        return conn.execute(sa.delete(s).where(s.c.name.in_(wanted))).rowcount


def retire_partitions(bind: Bind, job: str, keep: Iterable[str]) -> list[str]:
    """Delete the partition rows of ``job`` (``<job>#<i>/<n>``) whose names are not in
    ``keep``: what is left of another partition count. A pass still running under a
    deleted row finishes its range (its ``finish`` then changes nothing). Returns the
    names deleted."""
    prefix = job + "#"
    with transaction(bind) as conn:
        return list(conn.execute(
            sa.delete(s)
            .where(sa.func.starts_with(s.c.name, prefix), s.c.name.not_in(sorted(set(keep))))
            .returning(s.c.name)
        ).scalars())


def list_schedules(bind: Bind) -> list[Schedule]:
    """Every schedule, by name."""
    with transaction(bind) as conn:
        rows = conn.execute(sa.select(s).order_by(s.c.name)).mappings().all()
    return [Schedule(**row) for row in rows]
