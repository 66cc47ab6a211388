"""Process lifecycle and maintenance: heartbeat (``heartbeat.lua``), release at stop,
promotion of due jobs (``promote.lua``), reaping of dead processes (``reap.lua``), and
the dead set's trim.

Liveness is judged on the Redis server's clock only: a beat scores its process in
``{ns}:beats`` at the server's ``TIME`` plus the lease, and a reap compares with the
server's ``TIME``; no host's clock is involved. One reap call examines at most
:data:`REAP_BATCH` lapsed processes (the caller repeats while more wait) and samples
:data:`LEGACY_SAMPLE` members of ``{ns}:procs`` for records of the previous version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import redis

from .base import WAKE_CAP, BrokerBase

SCHEDULER_KEEP = 86_400.0
"""Seconds a scheduler's record stays in ``{ns}:schedulers`` after its last beat (so a
dead one is shown, then forgotten)."""


def _beat_of(raw: bytes) -> float:
    """The ``beat`` of a scheduler record; 0 for one that cannot be read (dropped)."""
    try:
        return float(json.loads(raw)["beat"])
    except (ValueError, KeyError, TypeError):
        return 0.0


RECOVERY_TTL = 7 * 24 * 3600
"""Seconds a per-job crash-recovery counter is remembered."""

REAP_BATCH = 100
"""Most lapsed processes one ``reap.lua`` call examines; :meth:`MaintenanceOps.reap`
callers repeat while ``more`` is set, so one call stays short however many died."""

DEAD_TRIM_BATCH = 1000
"""Most dead-set members one ``trim_dead.lua`` call removes."""

LEGACY_SAMPLE = 100
"""Members of ``{ns}:procs`` one reap call samples (``SRANDMEMBER``) for processes
missing from ``{ns}:beats``: those registered by the previous version, whose
heartbeat never wrote that set (or whose entry was evicted). A constant cost per call;
in a fleet of N such a record is found after about N / 100 reaps."""


@dataclass(frozen=True)
class ReapResult:
    """What one ``reap.lua`` call did: jobs requeued, processes reaped, and the
    payloads of the poison pills it sent to the dead set."""

    requeued: int
    reaped_processes: int
    poison: list[bytes]
    more: bool = False
    """More lapsed processes wait than this call examined: call again."""


class MaintenanceOps(BrokerBase):
    def promote(self, limit: int = 1000) -> tuple[int, int, bool]:
        """Move due scheduled and retry jobs to their queues: (scheduled, retries, more
        due). Due means due by the Redis server's clock, not this host's."""
        sched, retry, more = self._promote(keys=[self.keys.script_key], args=[limit, WAKE_CAP])
        return int(sched), int(retry), bool(more)

    def reap(self, limit: int = REAP_BATCH) -> ReapResult:
        """Return the jobs of up to ``limit`` processes whose heartbeat lapsed; report
        poison pills (``more``: call again). Callers in a loop take the reaper's turn
        first (:meth:`take_reaper_turn`)."""
        if limit < 1:
            raise ValueError(f"reap limit must be at least 1, got {limit}")
        out = self._reap(
            keys=[self.keys.script_key],
            args=[self.settings.max_recoveries, RECOVERY_TTL, WAKE_CAP, limit, LEGACY_SAMPLE],
        )
        return ReapResult(int(out[0]), int(out[1]), list(out[3:]), more=bool(int(out[2])))

    def take_reaper_turn(self, me: str, turn_ms: int) -> int:
        """Take the fleet-wide reaper's turn for ``turn_ms`` (``SET {ns}:reaper me NX
        PX``, and its ``PTTL``, in one round trip): 0 if it is now ours, else the ms
        until the holder's turn lapses. A plain command, not a script: the fleet makes
        one such call per process and interval, so it must cost Redis next to nothing."""
        if turn_ms < 1:
            raise ValueError(f"the reaper's turn must last at least 1 ms, got {turn_ms}")
        key = self.keys.reaper
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(key, me, nx=True, px=turn_ms)
        pipe.pttl(key)
        taken, left = pipe.execute()
        if taken:
            return 0
        if int(left) == -1:
            # a turn without expiry (written by hand?) would stop reaping for good
            self.redis.pexpire(key, turn_ms)
            return turn_ms
        return max(1, int(left))  # -2: lapsed just now; try again at once

    def trim_dead(self) -> None:
        """Keep the dead set within ``dead_max_jobs`` and ``dead_timeout_seconds``
        (fetch.lua trims when a worker kills a job; the reaper and promoter do not),
        ``trim_dead.lua``: 1,000 members per call, and their jid index entries with them.
        The age is measured on the Redis server's clock, the one the scores are on."""
        s = self.settings
        args = [s.dead_max_jobs, int(s.dead_timeout_seconds), DEAD_TRIM_BATCH]
        while int(self._trim_dead(keys=[self.keys.script_key], args=args)) == DEAD_TRIM_BATCH:
            pass  # more to trim (a lowered dead_max_jobs): the next 1,000

    def release(self, proc_id: str) -> int:
        """Push back every job ``proc_id`` holds and unregister it; returns the count."""
        return int(self._release(keys=[self.keys.script_key], args=[proc_id, WAKE_CAP]))

    def scheduler_beat(self, owner: str, info: dict[str, Any], ttl: float) -> None:
        """Scheduler ``owner`` is alive for ``ttl`` seconds: its alive key, and its
        record (``info`` as JSON, with ``beat``: the Redis server's time) in
        ``{ns}:schedulers``, where records not renewed for a day are dropped."""
        k = self.keys
        seconds, micros = self.redis.time()
        now = seconds + micros / 1e6
        record = json.dumps({**info, "beat": now})
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(k.scheduler_alive(owner), record, px=max(1, int(ttl * 1000)))
        pipe.hset(k.schedulers, owner, record)
        pipe.hgetall(k.schedulers)
        *_, everyone = pipe.execute()
        stale = [o for o, raw in cast("dict[bytes, bytes]", everyone).items()
                 if _beat_of(raw) < now - SCHEDULER_KEEP]
        if stale:
            self.redis.hdel(k.schedulers, *stale)

    def scheduler_gone(self, owner: str) -> None:
        """Scheduler ``owner`` stopped cleanly: its alive key and its record go."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.scheduler_alive(owner))
        pipe.hdel(self.keys.schedulers, owner)
        pipe.execute()

    def heartbeat(self, proc_id: str, info: dict[str, Any]) -> None:
        """Register or refresh a process (``heartbeat.lua``): info hash, membership,
        its lease sentinel, and its lapse time in ``{ns}:beats`` (server clock).

        Re-registers everything each beat, so a process survives a Redis restart or
        flush: it is back in ``{ns}:beats`` at its next beat.
        """
        k = self.keys
        lease_ms = int(self.settings.lease_seconds * 1000)
        fields: list[str] = []
        for key, v in info.items():
            fields += [key, str(v)]
        try:
            self._heartbeat(keys=[k.script_key], args=[proc_id, lease_ms, *fields])
        except redis.OutOfMemoryError:
            # At maxmemory under noeviction, SET/HSET/SADD are refused but PEXPIRE is
            # not: keep the lease alive, or reapers would take this live (and draining)
            # worker for dead and run its jobs a second time.
            # (the script writes nothing when refused: its first write is the SADD).
            # The reaper re-reads the alive key of a lapsed {ns}:beats score.
            if not self.redis.pexpire(k.alive(proc_id), lease_ms):
                raise
