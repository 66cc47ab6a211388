"""Process lifecycle and maintenance: heartbeat, release at stop, promotion of due jobs
(``promote.lua``), reaping of dead processes (``reap.lua``), and the dead set's trim."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from .base import WAKE_CAP, BrokerBase

RECOVERY_TTL = 7 * 24 * 3600
"""Seconds a per-job crash-recovery counter is remembered."""


@dataclass(frozen=True)
class ReapResult:
    """What one ``reap.lua`` call did: jobs requeued, processes reaped, and the
    payloads of the poison pills it sent to the dead set."""

    requeued: int
    reaped_processes: int
    poison: list[bytes]


class MaintenanceOps(BrokerBase):
    def promote(self, limit: int = 1000, now: float | None = None) -> tuple[int, int, bool]:
        """Move due scheduled and retry jobs to their queues: (scheduled, retries, more due)."""
        sched, retry, more = self._promote(
            keys=[self.keys.script_key], args=[repr(time.time() if now is None else now), limit, WAKE_CAP]
        )
        return int(sched), int(retry), bool(more)

    def reap(self, now: float | None = None) -> ReapResult:
        """Return the jobs of processes whose lease expired; report poison pills."""
        out = self._reap(
            keys=[self.keys.script_key],
            args=[repr(time.time() if now is None else now), self.settings.max_recoveries,
                  RECOVERY_TTL, WAKE_CAP],
        )
        return ReapResult(int(out[0]), int(out[1]), list(out[2:]))

    def trim_dead(self) -> None:
        """Keep the dead set within ``dead_max_jobs`` and ``dead_timeout_seconds``
        (fetch.lua trims when a worker kills a job; the reaper and promoter do not)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(self.keys.dead, "-inf", time.time() - self.settings.dead_timeout_seconds)
        pipe.zremrangebyrank(self.keys.dead, 0, -(self.settings.dead_max_jobs + 1))
        pipe.execute()

    def release(self, proc_id: str) -> int:
        """Push back every job ``proc_id`` holds and unregister it; returns the count."""
        return int(self._release(keys=[self.keys.script_key], args=[proc_id, WAKE_CAP]))

    def heartbeat(self, proc_id: str, info: dict[str, Any]) -> None:
        """Register or refresh a process: info hash, membership, and its lease sentinel.

        Re-registers everything each beat, so a process survives a Redis restart.
        """
        k = self.keys
        pipe = self.redis.pipeline(transaction=True)
        pipe.sadd(k.procs, proc_id)
        pipe.hset(k.proc(proc_id), mapping={key: str(v) for key, v in info.items()})
        pipe.set(k.alive(proc_id), b"1", px=int(self.settings.lease_seconds * 1000))
        try:
            pipe.execute()
        except redis.OutOfMemoryError:
            # At maxmemory under noeviction, SET/HSET/SADD are refused but PEXPIRE is
            # not: keep the lease alive, or reapers would take this live (and draining)
            # worker for dead and run its jobs a second time.
            if not self.redis.pexpire(k.alive(proc_id), int(self.settings.lease_seconds * 1000)):
                raise
