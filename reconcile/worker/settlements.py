"""Settlements of finished jobs: queued to ride along with the next fetch, or sent.

A finished job's settle op (:class:`~reconcile.broker.SettleOp`) is queued in
:class:`Settlements`; the fetcher takes the queue into its next exchange (one round
trip for the acks and the next batch). When no fetch will come soon (the fetcher is
idle or the process quiet) the executor thread sends them itself through
:class:`Settler`. A settlement never gets lost in the process: if Redis fails it goes
back to the queue, and what never reached Redis at shutdown is reported by ``stop()``.
A settlement applies only while its lease is held (``fetch.lua``), so a late or
repeated one is a no-op.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from ..broker import Broker, SettleOp

log = logging.getLogger("reconcile.worker")

RETRY_ATTEMPTS = 5
"""Attempts :func:`retrying` makes before giving up (pauses 0.2, 0.4, ... 1.0 s)."""


class Settlements:
    """Settle ops of finished jobs, waiting to ride along with the next fetch.

    Any thread adds; the fetcher, ``stop()`` and threads settling on their own take.
    Its own lock (not the slots' one) guards the list: adding an op never waits for a
    thread holding the slots.
    """

    def __init__(self) -> None:
        self._ops: list[SettleOp] = []  # guarded by _lock
        self._lock = threading.Lock()

    def add(self, op: SettleOp) -> None:
        with self._lock:
            self._ops.append(op)

    def add_all(self, ops: list[SettleOp]) -> None:
        with self._lock:
            self._ops.extend(ops)

    def take(self) -> list[SettleOp]:
        """Everything queued, oldest first; the queue is empty afterwards."""
        with self._lock:
            ops, self._ops = self._ops, []
        return ops

    def put_back(self, ops: list[SettleOp]) -> None:
        """Return ops that could not be sent, ahead of those queued since."""
        with self._lock:
            self._ops[:0] = ops

    def fields(self) -> set[bytes]:
        """Lease fields of the queued ops (for the heartbeat's orphan sweep)."""
        with self._lock:
            return {op.field for op in self._ops}

    def __len__(self) -> int:
        return len(self._ops)  # unlocked: a hint (is anything queued?), not a count to trust


def retrying(what: str, call: Callable[[], int]) -> int | None:
    """``call()`` tried up to :data:`RETRY_ATTEMPTS` times, pausing 0.2, 0.4 ... s after
    each Redis error (logged with ``what``); None if every attempt failed."""
    for attempt in range(RETRY_ATTEMPTS):
        try:
            return call()
        except redis.RedisError as exc:
            log.warning("could not %s (%s), attempt %d", what, exc, attempt + 1)
            time.sleep(0.2 * (attempt + 1))
    return None


class Settler:
    """Sends settlements of one process now, through ``resolve`` (which swaps the
    provisional fields of claimed jobs for their lease fields, see ``claim.py``)."""

    def __init__(
        self, broker: Broker, proc_id: str, pending: Settlements,
        resolve: Callable[[list[SettleOp]], list[SettleOp]],
    ) -> None:
        self.broker = broker
        self.proc_id = proc_id
        self.pending = pending
        self.resolve = resolve

    def settle(self, ops: list[SettleOp]) -> None:
        """Send ``ops`` (retried); if Redis keeps failing they go back to ``pending``,
        for the next fetch or ``stop()`` to carry: a settlement is never dropped here."""
        ops = self.resolve(ops)
        if not ops:
            return
        if retrying(f"settle {len(ops)} jobs", lambda: self.broker.settle(self.proc_id, ops)) is None:
            self.pending.put_back(ops)

    def flush(self) -> None:
        """Send everything queued in ``pending``."""
        self.settle(self.pending.take())

    def release(self) -> int | None:
        """Push every job still leased back to its queue and unregister the process;
        how many went back, None if Redis failed every attempt."""
        return retrying("release leases", lambda: self.broker.release(self.proc_id))


class RedisTrouble:
    """Logs a Redis error of any worker thread, at most once per :attr:`every` seconds
    (the threads retry with backoff; one line says why)."""

    every = 5.0

    def __init__(self) -> None:
        self._last = 0.0  # monotonic time of the last line; racy by design (a log rate)

    def __call__(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last > self.every:
            self._last = now
            log.warning("Redis unavailable (%s); retrying with backoff", exc)
