"""The Redis side of reconcile-pass enqueues: ``pass_enqueue.lua``, a call per page.

A pass pushes pages of jobs of one class: one queue, one lock TTL, payloads that
differ only in jid, args and timestamps. :class:`PassPusher` sends what a page shares
once, and each key's digest and payload packed into one argument each (see the
script's header), instead of :meth:`Broker.push`'s five arguments per job. It takes
the same uniqueness locks (``{ns}:unique:<digest>``) as ``enqueue.lua``, so a key
enqueued by ``perform_async`` and the same key found by a pass dedupe against each
other.

Contracts:

* :meth:`PassPusher.probe` says which locks are free and takes none, so a pass may
  build payloads only for those keys without opening a window in which a lock is held
  by a job that was never pushed; given the queue and the lock TTL it renews the held
  locks it finds while the queue holds jobs (see below), else it is read-only;
* renewal: a probe given ``lock_ttl_ms`` and a push renew each held lock they find
  while the class's queue is not empty, once less than half its TTL is left, so
  the locks of a backlog that drains slower than the TTL do not lapse while passes
  still find its keys pending (a lapsed lock would let a pass enqueue a queued key
  again). With the queue empty locks lapse as before, which is what re-derives a
  key whose job Redis lost while its lock survived;
* :meth:`PassPusher.push` takes the locks and pushes in one atomic call; a job whose
  lock is held (taken since the probe, say) is dropped and reported as such;
* under ``maxmemory`` with ``noeviction`` a push raises :class:`BrokerError` and writes
  nothing of its call, like :meth:`Broker.push`.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from ..errors import BrokerError
from .base import WAKE_CAP
from .broker import Broker
from .enqueue import enqueue_refused

PROBE = b"P"
PUSH = b"N"
PUSH_OVERWRITE = b"O"


class PassPusher:
    """Pass enqueues for one broker's namespace. Thread-safe (one script object, the
    broker's connections)."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._script = broker.register("pass_enqueue.lua")

    def probe(self, digests: bytes, width: int, queue: str = "", lock_ttl_ms: int = 0) -> bytes:
        """Which locks are free, without taking any: one byte per digest of the
        concatenated ``digests`` (``width`` bytes each), ``1`` free, ``0`` held.
        Given ``queue`` and ``lock_ttl_ms``, held locks are renewed while ``queue``
        holds jobs (the module docstring's renewal; one PTTL per key then, instead of
        one MGET per call)."""
        if not digests:
            return b""
        return self._call([PROBE, width, digests, queue, lock_ttl_ms], len(digests) // width)

    def push(
        self, *, queue: str, lock_ttl_ms: int, digests: bytes, width: int, payloads: bytes,
        count: int, delays: Sequence[float] | None = None, overwrite: bool = False,
    ) -> bytes:
        """Push ``count`` jobs of one queue in one call; returns one byte per job, ``1``
        pushed, ``0`` dropped because its lock was held.

        ``payloads``: each job's payload followed by ``b"\\n"``; ``digests``: the jobs'
        lock digests concatenated, ``width`` bytes each (``width`` 0 and ``b""``: the
        jobs take no lock). ``delays``: each job's delay in seconds (the pass's jitter;
        None: all now); one above 0 goes to the scheduled set at the Redis server's
        clock plus the delay (never this host's clock). ``overwrite`` takes every lock even if held
        and pushes every job (a pass after a Redis loss, which does not trust locks).
        """
        if count == 0:
            return b""
        delay_blob = b"" if delays is None else "".join([f"{d!r}\n" for d in delays]).encode()
        mode = PUSH_OVERWRITE if overwrite else PUSH
        args: list[bytes | str | int] = [mode, width, digests, WAKE_CAP, queue,
                                         lock_ttl_ms, payloads, delay_blob]
        return self._call(args, count)

    def _call(self, args: list[bytes | str | int], count: int) -> bytes:
        try:
            # the broker's hot-path call (its own connections, NOSCRIPT handled)
            flags: bytes = self._broker._eval(self._script, args)
        except redis.OutOfMemoryError as exc:
            raise enqueue_refused(count, exc) from exc
        if len(flags) != count:  # a framing mistake must not pass as a count
            raise BrokerError(f"pass_enqueue.lua answered {len(flags)} flags for {count} jobs")
        return flags
