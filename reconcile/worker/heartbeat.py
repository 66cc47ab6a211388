"""The heartbeat thread: keeps the process's lease alive and sweeps orphaned leases.

Every ``lease_seconds / 4`` it refreshes ``{ns}:alive:<proc>`` (with the process's
info: queues, concurrency, busy threads, quiet), adds the executor's outcome counters
to Redis, and sweeps orphans (:meth:`Heartbeat.sweep_orphans`). If the process dies,
the alive key expires and any live process's reaper returns its jobs to their queues.
On a Redis error the counters are kept for the next beat. Through Sentinel each beat
first asks where the primary is, and drops connections to one that was demoted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from ..broker import Broker, SettleOp
from .claim import Aliases
from .executor import Executor
from .settlements import RedisTrouble, Settlements, Settler
from .slots import Slots

log = logging.getLogger("reconcile.worker")


class Heartbeat:
    """Beats for one process (:meth:`run` is the thread's target)."""

    def __init__(
        self, broker: Broker, proc_id: str, interval: float, info: Callable[[], dict[str, Any]],
        executor: Executor, slots: Slots, pending: Settlements, aliases: Aliases,
        settler: Settler, trouble: RedisTrouble,
    ) -> None:
        self.broker = broker
        self.proc_id = proc_id
        self.interval = interval
        self.info = info
        self.executor = executor
        self.slots = slots
        self.pending = pending
        self.aliases = aliases
        self.settler = settler
        self.trouble = trouble
        # monotonic times of the last loop iteration and of the last beat Redis took:
        # written by the heartbeat thread, read by health checks (observe/health.py)
        self.looped_at = self.redis_ok_at = time.monotonic()
        # called at each beat (the metrics' process gauges), None: nothing
        self.on_beat: Callable[[], None] | None = None
        # written and read by the heartbeat thread only
        self._suspects: set[bytes] = set()  # lease fields unknown locally at the last beat

    def run(self, stop: threading.Event) -> None:
        """Beat every ``interval`` seconds until ``stop`` is set."""
        while not stop.wait(self.interval):
            self.looped_at = time.monotonic()
            if self.on_beat is not None:
                self.on_beat()
            counts = self.executor.take_counts()
            # through Sentinel: leave a demoted primary (which still takes writes for
            # seconds, all of them lost) for the one the Sentinels name; never raises,
            # so a Sentinel outage cannot cost a beat (and the leases with it)
            self.broker.follow_now_and_then()
            try:
                self.broker.heartbeat(self.proc_id, self.info())
                self.redis_ok_at = time.monotonic()
                for name, n in counts.items():
                    self.broker.incr_counter(name, n)
                counts = {}
                self.sweep_orphans()
            except redis.RedisError as exc:
                self.trouble(exc)
                for name, n in counts.items():
                    self.executor.count(name, n)

    def sweep_orphans(self) -> int:
        """Push back leases this process holds in Redis but knows nothing about.

        A fetch whose reply was lost (a connection reset after the script ran, which
        redis-py then retries) leaves jobs in our lease hash that no thread will ever
        run; a settlement given up after repeated Redis errors leaves finished jobs
        there. The heartbeat keeps such a lease alive, so no reaper would return them.
        A field unknown locally at two heartbeats in a row goes back to its queue
        (at-least-once: a late settlement of it is skipped by ``fetch.lua``).
        """
        fields = self.broker.lease_fields(self.proc_id)
        known = self.slots.known_fields()
        known |= self.pending.fields()
        # claimed deliveries are known by their provisional field until settled
        known |= self.aliases.known_fields()
        unknown = fields - known
        confirmed = sorted(unknown & self._suspects)
        self._suspects = unknown - set(confirmed)
        if not confirmed:
            return 0
        raws = self.broker.leased_payloads(self.proc_id, confirmed)
        ops = [
            SettleOp.push_back(f, f.split(b"|", 1)[1].decode(), raw)
            for f, raw in zip(confirmed, raws, strict=True) if raw is not None
        ]
        log.warning("%d leased jobs unknown to this process (a lost fetch reply?): "
                    "pushed back to their queues", len(ops))
        self.settler.settle(ops)
        return len(ops)
