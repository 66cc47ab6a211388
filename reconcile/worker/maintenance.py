"""Maintenance that runs in every worker process: promotion and reaping.

* **Promotion**: due jobs of the scheduled and retry sets move to their queues, one
  Lua call per batch of 1000, every ``poll_interval`` seconds on average (randomised
  between 0.5x and 1.5x so that many processes spread their calls, as in Sidekiq).
  Delayed jobs and retries therefore move even when no ``reconcile scheduler`` runs.
* **Reaping**: jobs leased by processes whose lease expired (SIGKILL, OOM, lost host)
  go back to the head of their queues; a job recovered more than ``max_recoveries``
  times is a poison pill and goes dead (and a ReconciledJob's key is quarantined).
  Runs every ``lease_seconds / 4`` on average, so a crashed worker's jobs are back
  within ``lease_seconds`` plus at most ``lease_seconds * 3 / 8``.

``promote_once`` and ``reap_once`` each do one round and are what tests call; ``run``
loops until stopped (the worker's ``reconcile-maintenance`` thread). The log lines keep
the ``reconcile.poller`` logger name the operations runbook lists.
"""

from __future__ import annotations

import logging
import random
import threading
import time

import redis

from .. import registry
from ..broker import Broker
from ..config import Settings
from ..errors import ReconcileError, WorkerCrashed
from ..logs import safe
from ..payload import loads_lenient

log = logging.getLogger("reconcile.poller")

PROMOTE_BATCH = 1000


class Maintenance:
    """Promotion and reaping for one process."""

    def __init__(self, settings: Settings, broker: Broker) -> None:
        self.settings = settings
        self.broker = broker
        self.promoted = 0
        self.recovered = 0
        self.poisoned = 0

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
        """Recover the jobs of dead processes; returns how many went back to queues."""
        result = self.broker.reap()
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
        next_reap = time.monotonic() + random.uniform(0, s.lease_seconds / 4)
        while not stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_promote:
                    self.promote_once()
                    next_promote = now + s.poll_interval * random.uniform(0.5, 1.5)
                if now >= next_reap:
                    self.reap_once()
                    next_reap = now + (s.lease_seconds / 4) * random.uniform(0.5, 1.5)
            except redis.RedisError as exc:
                log.warning("maintenance round failed (%s); retrying", exc)
                # the failed step is due (in the past): try it again in a second, not at once
                next_promote = max(next_promote, now + 1.0)
                next_reap = max(next_reap, now + 1.0)
            stop.wait(max(0.01, min(next_promote, next_reap) - time.monotonic()))
