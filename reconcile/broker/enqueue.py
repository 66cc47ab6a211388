"""Enqueue: :meth:`EnqueueOps.push`, one ``enqueue.lua`` call per batch, and the
uniqueness locks' release.

Whose clock counts: a job's run-at is decided by the Redis server's clock. A
:class:`PushRecord` carries either a ``delay`` (``perform_in``, ``set(wait=)``), which
``enqueue.lua`` adds to Redis's ``TIME``, or an ``at`` that the application chose as an
absolute epoch time (``perform_at``, ``set(wait_until=)``), kept absolute and compared
with Redis's clock; never a run-at computed from this host's ``time.time()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import redis

from ..errors import BrokerError, NotReplicated
from .base import WAKE_CAP, BrokerBase


class PushRecord(NamedTuple):
    """One job to enqueue: queue, absolute run-at ``at`` (epoch seconds on the Redis
    server's clock; 0 = none), lock digest ("" = none), lock ttl ms, payload, and
    ``delay``: seconds after Redis's clock at the push (0 = none). A record has at most
    one of ``at`` and ``delay``; with neither it runs now."""

    queue: str
    at: float
    lock: str
    lock_ttl_ms: int
    payload: bytes
    delay: float = 0.0
    pass_lock: str = ""
    """``<class>\\n<args JSON>``: the key's pass lock (``pass_enqueue.lua``), which holds
    the job off too while a pass has it queued ("" = none: not a ReconciledJob key)."""


def run_at_arg(record: PushRecord) -> str:
    """The record's run-at in the scripts' format (``lua/prelude.lua``): ``+<s>`` a
    delay, ``<t>`` an absolute time, ``0`` now."""
    if record.delay:
        return "+" + repr(float(record.delay))
    return repr(float(record.at)) if record.at else "0"


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
    def push(self, records: Sequence[PushRecord], index: bool = False, *,
             replicated: bool = True) -> list[bool]:
        """Push a batch in one Lua call; ``False`` where a uniqueness lock was held. A
        job whose run-at is after the Redis server's clock goes to the scheduled set.
        ``index`` (plain jobs) also records each pushed job in the jid index, in the
        same call (``reconcile job JID`` finds it while it waits); ReconciledJobs are
        not indexed (they are found by key). Under ``maxmemory`` with ``noeviction``
        raises :class:`BrokerError` and writes nothing. With ``enqueue_replicas`` = N,
        returns only once N replicas have the batch (one ``WAIT`` per call, in the same
        round trip), else raises :class:`~reconcile.errors.NotReplicated` (the batch is
        on the primary); ``replicated`` False skips the wait (ReconciledJobs: their
        passes re-derive what a failover loses)."""
        if not records:
            return []
        # through Sentinel: leave a demoted primary within a second (it takes writes
        # until the Sentinels reconfigure it, and loses them)
        self.follow_now_and_then()
        try:
            return self._push(records, index, self.settings.enqueue_replicas if replicated else 0)
        except redis.OutOfMemoryError as exc:
            raise enqueue_refused(len(records), exc) from exc

    def _push(self, records: Sequence[PushRecord], index: bool, replicas: int) -> list[bool]:
        queue = records[0].queue
        if all(r.queue == queue and not r.lock and not r.at and not r.delay for r in records):
            # the common bulk case: one queue, no locks, run now
            mode = "QI" if index else "Q"
            self._call(len(records), replicas, [WAKE_CAP, mode, queue, *(r.payload for r in records)])
            return [True] * len(records)
        args: list[Any] = [WAKE_CAP, "FI" if index else "F"]
        for r in records:
            # a pass lock rides in the lock argument, after a newline (enqueue.lua)
            lock = r.lock + "\n" + r.pass_lock if r.pass_lock and r.lock else r.lock
            args += (r.queue, run_at_arg(r), lock, r.lock_ttl_ms, r.payload)
        flags = self._call(len(records), replicas, args)
        return [bool(f) for f in flags]

    def _call(self, count: int, wanted: int, args: list[Any]) -> Any:
        """One ``enqueue.lua`` call; with ``wanted`` replicas, its ``WAIT`` rides in the
        same round trip and too few acknowledgements raise :class:`NotReplicated`."""
        if not wanted:
            return self._eval(self._enqueue, args)
        timeout = self.settings.enqueue_replicas_timeout
        reply, acked = self._eval_wait(self._enqueue, args, wanted, max(1, round(timeout * 1000)))
        if acked < wanted:
            raise NotReplicated(acked, wanted, count, timeout)
        return reply

    def release_lock(self, digest: str) -> None:
        """Drop a uniqueness lock (``unique_until = "start"``): a digest's key, or a
        pass lock ``@<class>\n<args JSON>`` (from both of its class's generations)."""
        if digest.startswith("@") and "\n" in digest:
            job, member = digest[1:].split("\n", 1)
            pipe = self.redis.pipeline(transaction=False)
            pipe.srem(self.keys.plocks(job), member)
            pipe.srem(self.keys.plocks_prev(job), member)
            pipe.execute()
            return
        self.redis.delete(self.keys.unique(digest))

    def release_locks(self, digests: Sequence[str]) -> None:
        """Drop uniqueness locks (a pass after a Redis loss no longer trusts them)."""
        if digests:
            self.redis.unlink(*[self.keys.unique(d) for d in digests])
