"""The idle pickup of a single-queue process: one executor thread blocks on the queue.

In a process with one queue, an idle executor thread blocks in a claim (``BLMOVE``
from the queue into the process's claim list ``{ns}:claim:<proc>``) and runs the job
it gets at once, with no hand-over between threads, under a *provisional* lease field
(``~<n>|<queue>``). The fetcher, woken by the claim, adopts the job into the lease
hash (``exchange(adopt=queue)``, which also leases more jobs if there is room) and
learns its real lease field; the job's settlement waits until then
(:meth:`Aliases.resolve`).

Who does what:

* the idle fetcher posts the claim duty (``Slots.await_claim``); one executor thread
  takes it (``Slots.take``) and calls :meth:`Claimer.claim`;
* the fetcher calls :meth:`Claimer.adopt` after every wait;
* whichever thread sends settlements resolves their fields through :class:`Aliases`.

A process killed between claim and adoption holds the job only in its claim list:
``reap.lua`` and ``release.lua`` return it like a leased job.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from ..backoff import Backoff
from ..broker import Broker, Delivery, SettleOp
from .queues import QueueOrder
from .settlements import RedisTrouble, Settlements, retrying
from .slots import Slots
from .testsignals import WorkerSignals

log = logging.getLogger("reconcile.worker")

PROVISIONAL = b"~"
"""First byte of a provisional lease field (a real one starts with a digit)."""


class Aliases:
    """Provisional lease fields of claimed jobs and the real fields adoption gave them.

    One lock guards both fields: the claiming executor thread adds (under the slots'
    lock too), the fetcher records adoptions, any settling thread resolves.
    """

    def __init__(self, pending: Settlements) -> None:
        self._pending = pending
        self._lock = threading.Lock()
        self._real: dict[bytes, bytes | None] = {}  # provisional -> lease field (None: lost)
        self._unresolved = 0  # claims whose provisional field is still in use
        self._seq = 0

    def new_field(self, queue: str) -> bytes:
        """A fresh provisional field for a job claimed from ``queue``."""
        with self._lock:
            self._seq += 1
            self._unresolved += 1
            return b"%s%d|%s" % (PROVISIONAL, self._seq, queue.encode())

    def adopted(self, fields: dict[bytes, bytes | None]) -> None:
        """Record the lease fields adoption gave (None: the job was not found)."""
        with self._lock:
            self._real.update(fields)

    def resolve(self, ops: list[SettleOp]) -> list[SettleOp]:
        """Swap provisional lease fields for the adopted ones; settlements of claims not
        yet adopted go back to ``pending`` to wait (the fetcher adopts right after a
        claim). Free when no claim is unresolved (the common multi-queue case)."""
        if not self._unresolved:  # unlocked: only this process's own claims raise it
            return ops
        out: list[SettleOp] = []
        waiting: list[SettleOp] = []
        with self._lock:
            for op in ops:
                if op.field[:1] == PROVISIONAL:
                    if op.field not in self._real:
                        waiting.append(op)
                        continue
                    real = self._real.pop(op.field)
                    self._unresolved -= 1
                    if real is None:
                        continue
                    op = op._replace(field=real)
                out.append(op)
        if waiting:
            self._pending.put_back(waiting)
        return out

    def known_fields(self) -> set[bytes]:
        """Lease fields of adopted claims not settled yet."""
        with self._lock:
            return {f for f in self._real.values() if f is not None}


class Claimer:
    """Claim and adoption for a process whose only queue is ``queue``."""

    def __init__(
        self, broker: Broker, proc_id: str, queue: str, order: QueueOrder, idle_wait: float,
        slots: Slots, pending: Settlements, aliases: Aliases, trouble: RedisTrouble,
        signals: WorkerSignals | None = None,
    ) -> None:
        self.broker = broker
        self.proc_id = proc_id
        self.queue = queue
        self.order = order
        self.idle_wait = idle_wait
        self.slots = slots
        self.pending = pending
        self.aliases = aliases
        self.trouble = trouble
        self.signals = signals

    def claim(self) -> Delivery | None:
        """Executor thread on claim duty: block in a claim (BLMOVE). Returns a job to
        run at once; None if nothing came, the job is recovered from a crash (buffered
        to run alone), or the process went quiet (the job is handed back)."""
        queue = self.queue
        raw: bytes | None = None
        if self.signals is not None:
            self.signals.claim_waiting.fire(None)
        # stay blocked in Redis while nothing comes, so an idle process always has a
        # thread waiting on its queue (the fetcher's own wait is only a safety net)
        while raw is None and not self.slots.quiet.is_set():
            try:
                raw = self.broker.claim(self.proc_id, queue, self.idle_wait)
            except redis.RedisError as exc:
                self.trouble(exc)
                self.slots.quiet.wait(0.5)
        d, hand_back = self.slots.end_claim(raw, queue, lambda: self.aliases.new_field(queue))
        if hand_back:
            # if every attempt fails the job stays in the claim list, where release.lua
            # at shutdown, or a reaper, returns it
            retrying("hand a claimed job back", lambda: self.broker.unclaim(self.proc_id, queue))
        return d

    def adopt(self) -> None:
        """Fetcher: adopt the jobs executor threads claimed into the lease hash (with
        more jobs if there is room), and give their provisional fields the real ones.
        If Redis is unreachable, retried with backoff; the jobs stay safe in the claim
        list (when stopping, release.lua returns them and their settlements drop)."""
        claimed = self.slots.take_claimed()
        if not claimed:
            return
        backoff = Backoff(first=0.05, cap=2.0)
        while True:
            want = self.slots.adoption_room()
            ops = self.aliases.resolve(self.pending.take())
            try:
                got = self.broker.exchange(self.proc_id, self.order.next(), want, ops,
                                           adopt=self.queue)
                break
            except redis.RedisError as exc:
                self.pending.put_back(ops)
                self.trouble(exc)
                if self.slots.stopping.is_set():
                    got = []
                    break
                time.sleep(backoff.next())
        fields: dict[bytes, bytes | None] = {}
        rest: list[Delivery] = []
        waiting = {raw: provisional for provisional, raw in claimed}
        for d in got:
            provisional = waiting.pop(d.raw, None)
            if provisional is not None:
                fields[provisional] = d.field
            else:
                rest.append(d)
        for provisional in waiting.values():
            # not in the claim list any more: a reply lost and the call retried (the job
            # sits in the lease hash under a field we never saw, and the orphan sweep
            # pushes it back: at-least-once), or released at shutdown. Its settlement
            # is dropped.
            log.warning("a claimed job was not found at adoption; it is pushed back to its queue")
            fields[provisional] = None
        self.aliases.adopted(fields)
        self.slots.land(rest)
        if self.signals is not None:
            self.signals.adopted.fire(len(claimed))
            self.signals.fetch_landed.fire(len(rest))
