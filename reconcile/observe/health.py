"""Liveness and readiness of a worker or a scheduler, from what the process knows.

A check reads in-process state only (thread table, timestamps the loops write): it
makes no round trip, so a probe costs nothing and answers even while Redis or
PostgreSQL hang. The rules (docs/operations.md, "Health checks"):

======================  ==================================================================
worker live             the heartbeat thread runs and its loop went round within
                        :data:`STALE_BEATS` intervals; the fetcher runs (until quiet);
                        at least one executor thread runs
worker ready            live, not quiet, and its last heartbeat reached Redis within
                        :data:`STALE_BEATS` intervals
scheduler live          its loop went round within :data:`SCHEDULER_STALE_SECONDS`
                        (it claims ticks; a failing round still goes round, with backoff)
scheduler ready         live, and a round (Redis check and claims in PostgreSQL) went
                        through within :data:`SCHEDULER_STALE_SECONDS`
======================  ==================================================================

Restart on liveness, route or page on readiness: a worker that cannot reach Redis is
not ready but alive (restarting it would not bring Redis back).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..scheduler.service import Scheduler
    from ..worker import Worker

STALE_BEATS = 3
"""Heartbeat intervals (``lease_seconds / 4``) after which a silent heartbeat fails a check."""

SCHEDULER_STALE_SECONDS = 30.0
"""Seconds without a loop iteration (or without a good round) that fail a scheduler's
check: three times the longest backoff between failing rounds (10 s)."""


@dataclass
class Health:
    """One check's answer: ``ok`` and, when not, ``reasons``; ``details`` for humans."""

    ok: bool
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def body(self, probe: str) -> dict[str, Any]:
        """The JSON body of ``/livez`` or ``/readyz``."""
        return {"status": "ok" if self.ok else "fail", "probe": probe,
                "reasons": self.reasons, **self.details}


def worker_health(worker: Worker, probe: str) -> Health:
    """``probe`` is ``live`` or ``ready``."""
    now = time.monotonic()
    hb = worker.heartbeat
    stale = STALE_BEATS * hb.interval
    threads = worker.threads
    reasons = []
    beat_ago = now - hb.looped_at
    if not any(t.name == "reconcile-heartbeat" and t.is_alive() for t in threads):
        reasons.append("the heartbeat thread has ended")
    elif beat_ago > stale:
        reasons.append(f"the heartbeat loop has not gone round for {beat_ago:.1f}s (limit {stale:g}s)")
    quiet = worker.slots.quiet.is_set()
    if not quiet and not any(t.name == "reconcile-fetcher" and t.is_alive() for t in threads):
        reasons.append("the fetcher thread has ended")
    if not any(t.name.startswith("reconcile-exec") and t.is_alive() for t in threads):
        reasons.append("no executor thread runs")
    details = {"process": worker.proc_id, "busy": worker.slots.busy, "quiet": quiet,
               "heartbeat_ago": round(beat_ago, 3),
               "redis_ok_ago": round(now - hb.redis_ok_at, 3)}
    if probe == "ready" and not reasons:
        if quiet:
            reasons.append("quiet (stopping or TSTP): fetching no new jobs")
        ok_ago = now - hb.redis_ok_at
        if ok_ago > stale:
            reasons.append(f"Redis has not answered a heartbeat for {ok_ago:.1f}s (limit {stale:g}s)")
    return Health(not reasons, reasons, details)


def scheduler_health(scheduler: Scheduler, probe: str) -> Health:
    """``probe`` is ``live`` or ``ready``."""
    now = time.monotonic()
    reasons = []
    loop_ago = now - scheduler.looped_at
    if loop_ago > SCHEDULER_STALE_SECONDS:
        reasons.append(f"the scheduler loop has not gone round for {loop_ago:.1f}s "
                       f"(limit {SCHEDULER_STALE_SECONDS:g}s)")
    ok_at = scheduler.round_ok_at
    details: dict[str, Any] = {
        "scheduler": scheduler.owner, "loop_ago": round(loop_ago, 3),
        "round_ok_ago": None if ok_at is None else round(now - ok_at, 3),
    }
    if probe == "ready" and not reasons:
        if ok_at is None:
            reasons.append("no round has gone through yet (Redis and PostgreSQL)")
        elif now - ok_at > SCHEDULER_STALE_SECONDS:
            reasons.append(f"no round has gone through for {now - ok_at:.1f}s: Redis or "
                           "PostgreSQL fails (see the log)")
    return Health(not reasons, reasons, details)
