"""Enqueue: :meth:`EnqueueOps.push`, one ``enqueue.lua`` call per batch, and the
uniqueness locks' release."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import redis

from ..errors import BrokerError
from .base import WAKE_CAP, BrokerBase


class PushRecord(NamedTuple):
    """One job to enqueue: queue, run-at (0 = now), lock digest ("" = none), lock ttl ms, payload."""

    queue: str
    at: float
    lock: str
    lock_ttl_ms: int
    payload: bytes


def enqueue_refused(count: int, exc: redis.OutOfMemoryError) -> BrokerError:
    """The error for an enqueue script that Redis refused for lack of memory. Such a
    script fails at its first write, so none of its ``count`` jobs was enqueued."""
    return BrokerError(
        f"Redis refused to enqueue {count} jobs: out of memory (used memory is "
        "over maxmemory and the policy is noeviction); none of them was enqueued. "
        "Free memory or raise maxmemory; ReconciledJob keys are enqueued again by "
        f"the next pass. ({exc})"
    )


class EnqueueOps(BrokerBase):
    def push(self, records: Sequence[PushRecord], now: float | None = None) -> list[bool]:
        """Push a batch in one Lua call; ``False`` where a uniqueness lock was held.
        Under ``maxmemory`` with ``noeviction`` raises :class:`BrokerError` and writes
        nothing."""
        if not records:
            return []
        try:
            return self._push(records, now)
        except redis.OutOfMemoryError as exc:
            raise enqueue_refused(len(records), exc) from exc

    def _push(self, records: Sequence[PushRecord], now: float | None) -> list[bool]:
        now = time.time() if now is None else now
        queue = records[0].queue
        if all(r.queue == queue and not r.lock and r.at <= now for r in records):
            # the common bulk case: one queue, no locks, run now
            self._eval(self._enqueue, [repr(now), WAKE_CAP, "Q", queue, *(r.payload for r in records)])
            return [True] * len(records)
        args: list[Any] = [repr(now), WAKE_CAP, "F"]
        for r in records:
            args += (r.queue, repr(r.at), r.lock, r.lock_ttl_ms, r.payload)
        flags = self._eval(self._enqueue, args)
        return [bool(f) for f in flags]

    def release_lock(self, digest: str) -> None:
        """Drop a uniqueness lock (``unique_until = "start"``)."""
        self.redis.delete(self.keys.unique(digest))

    def release_locks(self, digests: Sequence[str]) -> None:
        """Drop uniqueness locks (a pass after a Redis loss no longer trusts them)."""
        if digests:
            self.redis.unlink(*[self.keys.unique(d) for d in digests])
