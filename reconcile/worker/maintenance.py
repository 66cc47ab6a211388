"""Maintenance that runs in every worker process and every ``reconcile scheduler``:
promotion and reaping.

* **Promotion**: due jobs of the scheduled and retry sets move to their queues, one
  Lua call per batch of 1000, every ``poll_interval`` seconds on average (randomised
  between 0.5x and 1.5x so that many processes spread their calls, as in Sidekiq).
  Delayed jobs and retries therefore move when no scheduler runs, and, since
  schedulers promote too, when no worker runs (an autoscaler at zero workers still
  sees the queue grow).
* **Reaping**: jobs leased by processes whose heartbeat lapsed (SIGKILL, OOM, lost
  host) go back to the head of their queues; a job recovered more than
  ``max_recoveries`` times is a poison pill and goes dead (and a ReconciledJob's key is
  quarantined). One process reaps per interval fleet-wide: every process tries to take
  the reaper's turn (``{ns}:reaper``, ``SET NX PX``, held for ``lease_seconds / 4``),
  and one that finds it taken tries again when it lapses, plus a random
  0..``lease_seconds / 16`` so that the fleet does not try all at once. The holder
  reaps the lapsed processes only (the head of ``{ns}:beats``), batch by batch. So the
  reaps come at most ``lease_seconds * 5 / 16`` apart while any process runs, and a
  crashed worker's jobs are back within ``lease_seconds`` plus that (26.25 s with the
  defaults; the documented bound stays ``lease_seconds * 11 / 8``, 27.5 s). The work
  per interval is one reap of the dead, plus one refused ``SET NX`` per other process.

``promote_once`` and ``reap_once`` each do one round, without the turn, and are what
tests call; ``reap_turn`` is one round of the loop's reaping; ``run`` loops until
stopped (the ``reconcile-maintenance`` thread of workers and schedulers). The log
lines keep the ``reconcile.poller`` logger name the operations runbook lists.
"""

from __future__ import annotations

import logging
import random
import threading
import time

import redis

from .. import registry
from ..broker import Broker, ReapResult
from ..config import Settings
from ..errors import ReconcileError, WorkerCrashed
from ..logs import safe
from ..payload import loads_lenient

log = logging.getLogger("reconcile.poller")

PROMOTE_BATCH = 1000


class Maintenance:
    """Promotion and reaping for one process; ``me`` names it as the reaper's turn
    holder (its process id; ``reconcile status`` shows nothing of it)."""

    def __init__(self, settings: Settings, broker: Broker, me: str = "") -> None:
        self.settings = settings
        self.broker = broker
        self.me = me
        self.promoted = 0
        self.recovered = 0
        self.poisoned = 0
        self.reaps = 0  # turns taken (reap rounds this process ran in run())

    @property
    def reap_interval(self) -> float:
        """Seconds one reaper's turn lasts: ``lease_seconds / 4``."""
        return self.settings.lease_seconds / 4

    def promote_once(self) -> int:
        """Promote every due job now, batch by batch; returns how many moved."""
        moved = 0
        while True:
            sched, retry, more = self.broker.promote(PROMOTE_BATCH)
            moved += sched + retry
            if not more:
                break
        self.broker.trim_dead()  # promote.lua may have dead-lettered an entry naming no queue
        self.promoted += moved
        return moved

    def reap_once(self) -> int:
        """Recover the jobs of every dead process now, batch by batch, without taking
        the reaper's turn; returns how many went back to queues."""
        requeued = 0
        while True:
            result = self.broker.reap()
            requeued += self._reaped(result)
            if not result.more:
                return requeued

    def reap_turn(self) -> float:
        """Take the fleet-wide reaper's turn if it is free and reap everything lapsed;
        returns the seconds until the turn lapses (when to try again)."""
        turn_ms = max(1, int(self.reap_interval * 1000))
        busy_ms = self.broker.take_reaper_turn(self.me, turn_ms)
        if busy_ms:
            return busy_ms / 1000
        self.reaps += 1
        self.reap_once()
        return turn_ms / 1000

    def _reaped(self, result: ReapResult) -> int:
        if result.reaped_processes:
            log.warning(
                "recovered %d jobs from %d dead worker processes",
                result.requeued, result.reaped_processes,
            )
        for raw in result.poison:
            self._poisoned(raw)
        if result.poison:
            self.broker.trim_dead()
        self.recovered += result.requeued
        return result.requeued

    def _poisoned(self, raw: bytes) -> None:
        self.poisoned += 1
        payload = loads_lenient(raw)
        name = payload.get("class")
        log.error("job %s jid=%s killed workers too often: sent to the dead set",
                  safe(name), safe(payload.get("jid")))
        if not isinstance(name, str):
            return
        try:
            cls = registry.resolve(name)
        except ReconcileError:
            return
        exc = WorkerCrashed(
            f"recovered from crashed workers more than {self.settings.max_recoveries} times"
        )
        # as in its dead-set entry (reap.lua): this failure, not one of an earlier retry
        payload.update(error_class="WorkerCrashed", error_message=str(exc), failed_at=time.time())
        try:
            cls.on_death(payload, exc)
        except Exception:
            log.exception("on_death of %s failed for a poison pill", safe(name))

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set; Redis errors are logged and retried."""
        s = self.settings
        next_promote = time.monotonic() + random.uniform(0, s.poll_interval)
        spread = self.reap_interval / 4
        next_reap = time.monotonic() + random.uniform(0, spread)
        while not stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_promote:
                    self.promote_once()
                    next_promote = now + s.poll_interval * random.uniform(0.5, 1.5)
                if now >= next_reap:
                    # try again when the turn lapses (ours or another's), spread over a
                    # quarter of the interval so the fleet's refused SET NX do not bunch
                    next_reap = now + self.reap_turn() + random.uniform(0, spread)
            except redis.RedisError as exc:
                log.warning("maintenance round failed (%s); retrying", exc)
                # the failed step is due (in the past): try it again in a second, not at once
                next_promote = max(next_promote, now + 1.0)
                next_reap = max(next_reap, now + 1.0)
            stop.wait(max(0.01, min(next_promote, next_reap) - time.monotonic()))
