"""Redis-loss detection for the scheduler: the check that turns a flush, a restart
without persistence, a failover or an eviction into an incident.

The scheduler calls :meth:`RedisWatch.check` about once a second; a reason means Redis
no longer holds what it held, so every class's pass is made due now (the scheduler's
``check_redis``). Everything the watch reads comes from the broker (no Redis keys here).

A failover is a loss: writes the old primary acknowledged and had not replicated are
gone (and through Sentinel, a demoted primary accepts writes for seconds after the
promotion). It shows as a new ``run_id`` (another server answers); the new primary's
``master_replid2`` being the old primary's replication id tells it from a restart.
Through Sentinel the watch first asks where the primary is
(:meth:`~reconcile.broker.Broker.follow_now_and_then`), so the scheduler moves to the new
primary, and sees the incident, within a round of the promotion.
"""

from __future__ import annotations

import time
import uuid

from ..broker import Broker


class RedisWatch:
    """Detects that Redis lost our data: a vanished epoch sentinel, a new run_id (a
    restart, or a failover to another server), or keys evicted (``evicted_keys`` grew:
    under an ``allkeys-*`` policy the sentinel usually survives while queued jobs do not).

    ``check()`` only looks; ``rearm()`` records the new state once the loss has been
    handled, so a loss is never forgotten because handling it failed (PostgreSQL down).
    """

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.run_id: str | None = None
        self._seen_run_id: str | None = None
        self.replid = ""
        self._seen_replid = ""
        self.evicted: int | None = None
        self._seen_evicted: int | None = None

    @property
    def armed(self) -> bool:
        """True once a check found the namespace intact (or a loss was handled)."""
        return self.run_id is not None

    def check(self) -> str | None:
        """The reason if Redis lost data since the last ``rearm`` (on the first call:
        if the namespace is new or was emptied), else None."""
        self.broker.follow_now_and_then()  # through Sentinel: move to a new primary first
        run_id = self.broker.run_id()
        replid, replid2 = self.broker.replication_ids()
        evicted = self.broker.evicted_keys()
        self._seen_run_id = run_id
        self._seen_replid = replid
        self._seen_evicted = evicted
        if self.run_id is not None and run_id != self.run_id:
            if self.replid and replid2 == self.replid:
                return (f"Redis failover: a replica is the primary now (run_id {self.run_id[:8]} "
                        f"-> {run_id[:8]}, replication id {self.replid[:8]} -> {replid[:8]}); "
                        "writes the old primary had not replicated are lost")
            return f"Redis restarted (run_id {self.run_id[:8]} -> {run_id[:8]})"
        if self.broker.epoch() is None:
            return "epoch sentinel missing (namespace flushed, evicted or new)"
        if self.evicted is not None and evicted > self.evicted:
            return (f"Redis evicted {evicted - self.evicted} keys (maxmemory-policy is not "
                    "noeviction): queued jobs may be gone")
        if self.run_id is None:
            self.run_id = run_id
            self.replid = replid
        if self.evicted is None or evicted < self.evicted:
            self.evicted = evicted
        return None

    def rearm(self) -> None:
        self.broker.set_epoch(f"{time.time():.3f}:{uuid.uuid4().hex[:8]}")
        self.run_id = self._seen_run_id
        self.replid = self._seen_replid
        self.evicted = self._seen_evicted

    def lost(self) -> str | None:
        """``check()`` then ``rearm()``: for callers that handle the loss themselves."""
        reason = self.check()
        if reason:
            self.rearm()
        return reason
