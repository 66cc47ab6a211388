"""Which plain Job classes a kill switch holds, as this worker process sees them.

A disabled plain ``Job`` is held, not dropped (nothing would re-derive it later): the
executor re-schedules it (``HOLD_DELAY``). Workers read the switches from the Redis
mirror of ``reconcile_switches`` that schedulers keep, so a plain-job worker never
connects to PostgreSQL; the view is re-read at most every ``switch_cache_seconds``.
"""

from __future__ import annotations

import logging
import time

from ..broker import Broker

log = logging.getLogger("reconcile.worker")


class HeldJobs:
    """Plain Job classes disabled by a kill switch, read from the Redis mirror of
    ``reconcile_switches`` (so plain-job workers never connect to PostgreSQL), re-read
    at most every ``ttl`` seconds. If Redis cannot be read, the last view stays."""

    def __init__(self, broker: Broker, ttl: float) -> None:
        self.broker = broker
        self.ttl = ttl
        self._names: frozenset[str] = frozenset()
        self._read_at = -1e18

    def is_held(self, name: str) -> bool:
        now = time.monotonic()
        if now - self._read_at >= self.ttl:
            self._read_at = now
            try:
                self._names = frozenset(self.broker.disabled_jobs())
            except Exception as exc:
                log.warning("cannot read kill switches from Redis, keeping the last view: %s", exc)
        return name in self._names
