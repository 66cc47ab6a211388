"""Kill switches: per-job on/off, stored in PostgreSQL, cached per process.

A job with no row is enabled. An operator disables a job to stop both its reconcile
passes and the execution of its queued deliveries without a deploy. Processes read
the switches through :class:`SwitchCache`, so a change takes effect within
``Settings.switch_cache_seconds`` (default 5 s) everywhere.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine

from ..config import Settings
from ._tx import Bind, transaction
from .engine import get_engine
from .tables import switches as sw

log = logging.getLogger("reconcile.switches")


@dataclass(frozen=True)
class Switch:
    """One job's switch: ``enabled``, why it was set, when (database clock) and by whom
    (``user@host`` of the command, None when not known), and the last time it was
    disabled and why, which enabling it again keeps."""

    job: str
    enabled: bool
    reason: str | None
    changed_at: datetime
    changed_by: str | None = None
    last_disabled_reason: str | None = None
    last_disabled_at: datetime | None = None


def set_enabled(bind: Bind, job: str, enabled: bool, reason: str | None = None,
                by: str | None = None) -> None:
    """Switch ``job`` on or off, recording ``reason``, ``by`` and the time of the change.
    Disabling also records the reason as the last one it was disabled for; enabling
    keeps that history."""
    values: dict[str, object] = {"job": job, "enabled": enabled, "reason": reason, "changed_by": by}
    if not enabled:
        values |= {"last_disabled_reason": reason, "last_disabled_at": sa.func.now()}
    stmt = insert(sw).values(**values)
    changes: dict[str, object] = {
        "enabled": stmt.excluded.enabled, "reason": stmt.excluded.reason,
        "changed_by": stmt.excluded.changed_by, "changed_at": sa.func.now(),
    }
    if not enabled:
        changes |= {"last_disabled_reason": stmt.excluded.last_disabled_reason,
                    "last_disabled_at": sa.func.now()}
    stmt = stmt.on_conflict_do_update(index_elements=[sw.c.job], set_=changes)
    with transaction(bind) as conn:
        conn.execute(stmt)


def all_switches(bind: Bind) -> dict[str, Switch]:
    """Every job that has a switch row, by job name."""
    with transaction(bind) as conn:
        rows = conn.execute(sa.select(sw)).mappings().all()
    return {row["job"]: Switch(**row) for row in rows}


class SwitchCache:
    """Kill switches as one process sees them, re-read at most every ``ttl`` seconds.

    ``engine_factory`` is called at each refresh (so it can follow reconfiguration);
    ``ttl`` defaults to ``Settings.switch_cache_seconds`` of the caller, here 5 s;
    ``clock`` (monotonic seconds) is injectable for tests. One query reads every
    switch. If the database cannot be read, the last known switches stay in force
    (jobs never seen are enabled), the failure is logged once per outage, and the next
    attempt waits another ``ttl``. Thread-safe.
    """

    def __init__(
        self,
        engine_factory: Callable[[], Engine],
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine_factory = engine_factory
        self._ttl = ttl
        self._clock = clock
        self._refresh_lock = threading.Lock()
        self._enabled: dict[str, bool] = {}
        self._read_at: float | None = None
        self._failing = False

    def is_enabled(self, job: str, fresh: bool = False) -> bool:
        """Whether ``job`` may run: its cached switch, True if it has none.

        ``fresh=True`` reads the database now (a reconcile pass deciding whether to
        run), falling back to the cached switches if it cannot.
        """
        if fresh or self._stale():
            # Only the first read (and a fresh one) waits for a refresh in progress;
            # otherwise, while one thread refreshes, the others go on with the previous
            # switches rather than queue behind a slow or unreachable database.
            blocking = fresh or self._read_at is None
            if self._refresh_lock.acquire(blocking=blocking):
                try:
                    if fresh or self._stale():
                        self._refresh()
                finally:
                    self._refresh_lock.release()
        return self._enabled.get(job, True)

    def invalidate(self) -> None:
        """Re-read on next use (after this process changed a switch itself)."""
        self._read_at = None

    def _stale(self) -> bool:
        read_at = self._read_at
        return read_at is None or self._clock() - read_at >= self._ttl

    def _refresh(self) -> None:
        try:
            switches = all_switches(self._engine_factory())
        except sa.exc.SQLAlchemyError as exc:
            if not self._failing:
                log.warning("cannot read kill switches, keeping the last known ones: %s", exc)
                self._failing = True
            self._read_at = self._clock()
            return
        if self._failing:
            log.info("kill switches readable again")
            self._failing = False
        # One assignment: readers see the old or the new mapping, never a mix.
        self._enabled = {job: switch.enabled for job, switch in switches.items()}
        self._read_at = self._clock()


_caches: dict[tuple[str, float], SwitchCache] = {}
_caches_lock = threading.Lock()


def switch_cache(settings: Settings) -> SwitchCache:
    """The process-wide cache for ``settings.database_url``, re-read every
    ``settings.switch_cache_seconds``."""
    key = (settings.database_url, settings.switch_cache_seconds)
    with _caches_lock:
        cache = _caches.get(key)
        if cache is None:
            cache = SwitchCache(lambda: get_engine(settings), ttl=settings.switch_cache_seconds)
            _caches[key] = cache
        return cache
