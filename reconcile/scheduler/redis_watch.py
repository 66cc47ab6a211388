"""Redis-loss detection for the scheduler: the check that turns a flush, a restart
without persistence, a failover or an eviction into an incident.

The scheduler calls :meth:`RedisWatch.check` about once a second; a reason means Redis
no longer holds what it held, so every class's pass is made due now (the scheduler's
``check_redis``). Everything the watch reads comes from the broker (no Redis keys here).
"""

from __future__ import annotations

import time
import uuid

from ..broker import Broker


class RedisWatch:
    """Detects that Redis lost our data: a vanished epoch sentinel, a new run_id, or
    keys evicted (``evicted_keys`` grew: under an ``allkeys-*`` policy the sentinel
    usually survives while queued jobs do not).

    ``check()`` only looks; ``rearm()`` records the new state once the loss has been
    handled, so a loss is never forgotten because handling it failed (PostgreSQL down).
    """

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.run_id: str | None = None
        self._seen_run_id: str | None = None
        self.evicted: int | None = None
        self._seen_evicted: int | None = None

    @property
    def armed(self) -> bool:
        """True once a check found the namespace intact (or a loss was handled)."""
        return self.run_id is not None

    def check(self) -> str | None:
        """The reason if Redis lost data since the last ``rearm`` (on the first call:
        if the namespace is new or was emptied), else None."""
        run_id = self.broker.run_id()
        evicted = self.broker.evicted_keys()
        self._seen_run_id = run_id
        self._seen_evicted = evicted
        if self.run_id is not None and run_id != self.run_id:
            return f"Redis restarted (run_id {self.run_id[:8]} -> {run_id[:8]})"
        if self.broker.epoch() is None:
            return "epoch sentinel missing (namespace flushed, evicted or new)"
        if self.evicted is not None and evicted > self.evicted:
            return (f"Redis evicted {evicted - self.evicted} keys (maxmemory-policy is not "
                    "noeviction): queued jobs may be gone")
        if self.run_id is None:
            self.run_id = run_id
        if self.evicted is None or evicted < self.evicted:
            self.evicted = evicted
        return None

    def rearm(self) -> None:
        self.broker.set_epoch(f"{time.time():.3f}:{uuid.uuid4().hex[:8]}")
        self.run_id = self._seen_run_id
        self.evicted = self._seen_evicted

    def lost(self) -> str | None:
        """``check()`` then ``rearm()``: for callers that handle the loss themselves."""
        reason = self.check()
        if reason:
            self.rearm()
        return reason
