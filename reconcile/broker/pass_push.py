"""The Redis side of reconcile-pass enqueues: ``pass_enqueue.lua``, a call per page.

A pass pushes pages of jobs of one class: one queue, payloads that differ only in
jid and args (compact pass payloads, :mod:`reconcile.scheduler.fast_pass`).
:class:`PassPusher` sends what a page shares once, and each key's digest, lock member
and payload packed into one argument each (see the script's header), instead of
:meth:`Broker.push`'s five arguments per job.

Pass locks are members of a set per class and generation (``{ns}:plocks:<class>``,
``{ns}:plocks_prev:<class>``; the member is the key's canonical args JSON), not keys of
their own: about 55 bytes of Redis each instead of 150, and a Redis time per key
that does not grow with the number of queued keys. A pass also treats a key as held
while perform_async's lock of it (``{ns}:unique:<digest>``) exists.

Contracts:

* :meth:`PassPusher.probe` says which locks are free and takes none, so a pass may
  build payloads only for those keys without opening a window in which a lock is held
  by a job that was never pushed;
* renewal: a probe or a push that finds a lock held in the previous generation while
  the class's queue is not empty moves it to the current one, so the locks of a
  backlog that drains slower than ``unique_for`` do not lapse while passes still find
  its keys pending. With the queue empty locks lapse with their generation
  (:meth:`PassPusher.turn_generation`, after each pass: between half and once
  ``unique_for``), which is what re-derives a key whose job Redis lost while its lock
  survived;
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
GENERATION = b"G"


class PassPusher:
    """Pass enqueues for one broker's namespace. Thread-safe (one script object, the
    broker's connections)."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._script = broker.register("pass_enqueue.lua")

    def probe(self, job: str, digests: bytes, width: int, members: bytes, queue: str,
              count: int) -> bytes:
        """Which of ``count`` keys' locks are free, without taking any: one byte per
        key, ``1`` free, ``0`` held. ``members``: each key's lock member (its canonical
        args JSON) followed by ``b"\\n"``; ``digests``: its ``{ns}:unique:`` digest
        (perform_async's lock), ``width`` bytes each. Held locks found in the previous
        generation are renewed while ``queue`` holds jobs (the script's header)."""
        if not count:
            return b""
        return self._call([PROBE, job, width, digests, members, queue], count)

    def push(
        self, *, job: str, queue: str, digests: bytes, width: int, members: bytes,
        payloads: bytes, count: int, delays: Sequence[float] | None = None,
        overwrite: bool = False, half_life_ms: int = 1,
    ) -> bytes:
        """Push ``count`` jobs of class ``job`` on one queue in one call; returns one
        byte per job, ``1`` pushed, ``0`` dropped because its lock was held.

        ``payloads``: each job's payload followed by ``b"\\n"``; ``members`` and
        ``digests`` as for :meth:`probe` (``width`` 0 and ``b""``: the jobs take no
        lock). ``delays``: each job's delay in seconds (the pass's jitter; None: all
        now); one above 0 goes to the scheduled set at the Redis server's clock plus
        the delay (never this host's clock). ``overwrite`` takes every lock even if
        held and pushes every job (a pass after a Redis loss, which does not trust
        locks). ``half_life_ms`` (half of ``unique_for``): a push that takes a lock
        starts the current generation's clock if it is not running.
        """
        if count == 0:
            return b""
        delay_blob = b"" if delays is None else "".join([f"{d!r}\n" for d in delays]).encode()
        mode = PUSH_OVERWRITE if overwrite else PUSH
        args: list[bytes | str | int] = [mode, job, width, digests, members, queue, WAKE_CAP,
                                         payloads, delay_blob, max(1, half_life_ms)]
        return self._call(args, count)

    def turn_generation(self, job: str, half_life_ms: int) -> bool:
        """After a pass: make the current generation of ``job``'s pass locks the
        previous one (dropping the previous) if it is older than ``half_life_ms``
        (half of ``unique_for``). True if it turned."""
        try:
            done = self._broker._eval(self._script, [GENERATION, job, max(1, half_life_ms)])
        except redis.OutOfMemoryError as exc:
            raise BrokerError(f"turning the pass-lock generation of {job!r} was refused: {exc}") from exc
        return bool(done)

    def _call(self, args: list[bytes | str | int], count: int) -> bytes:
        try:
            # the broker's hot-path call (its own connections, NOSCRIPT handled)
            flags: bytes = self._broker._eval(self._script, args)
        except redis.OutOfMemoryError as exc:
            raise enqueue_refused(count, exc) from exc
        if len(flags) != count:  # a framing mistake must not pass as a count
            raise BrokerError(f"pass_enqueue.lua answered {len(flags)} flags for {count} jobs")
        return flags
