"""The fetcher thread: leases jobs into the buffer and carries the queued settlements.

One loop, one thread (``reconcile-fetcher``)::

    wait for room --> fetch.lua (settle queued ops, lease up to `want` jobs) --> land
         ^                                                                          |
         +------ nothing came: idle wait (claim duty, or BLPOP on wake-up lists) <--+

* It leases up to ``concurrency + prefetch - outstanding`` jobs per round trip (at
  most ``MAX_FETCH``); while the buffer still feeds the threads it waits until a batch
  (``refill`` slots) fits, so slow jobs do not cost one round trip each.
* With nothing to fetch it sends queued settlements at once, then waits: in a
  single-queue process it posts the claim duty (an executor thread blocks on the
  queue, see ``claim.py``) and sleeps until a claimed job needs adopting; with
  several queues it blocks on their wake-up lists (BLPOP). Either way a new job is
  picked up in milliseconds; ``idle_wait`` only bounds a missed wake-up.
* A Redis error puts the settlements back and retries after a capped doubling pause
  (0.05 s to 2 s, reset by the next success).
* On quiet it lands nothing more, adopts what was claimed (so those acks resolve),
  and exits: settlements are then sent by the executor threads and ``stop()``.
"""

from __future__ import annotations

import time

import redis

from ..backoff import Backoff
from ..broker import Broker
from .claim import Aliases, Claimer
from .queues import QueueOrder
from .settlements import RedisTrouble, Settlements, Settler
from .slots import Slots
from .testsignals import WorkerSignals

FETCH_BACKOFF = (0.05, 2.0)
"""First and longest pause (s) between fetches while Redis fails."""


class Fetcher:
    """The fetch loop of one process (:meth:`run` is the thread's target)."""

    def __init__(
        self, broker: Broker, proc_id: str, order: QueueOrder, idle_wait: float,
        slots: Slots, pending: Settlements, settler: Settler, aliases: Aliases,
        claimer: Claimer | None, trouble: RedisTrouble, signals: WorkerSignals | None = None,
    ) -> None:
        self.broker = broker
        self.proc_id = proc_id
        self.order = order
        self.idle_wait = idle_wait
        self.slots = slots
        self.pending = pending
        self.settler = settler
        self.aliases = aliases
        self.claimer = claimer
        self.trouble = trouble
        self.signals = signals

    def run(self) -> None:
        slots, signals = self.slots, self.signals
        backoff = Backoff(*FETCH_BACKOFF)
        while not slots.quiet.is_set():
            want = slots.wait_for_room()
            if slots.quiet.is_set():
                slots.land([])
                self._adopt()
                break
            ops = self.aliases.resolve(self.pending.take())
            try:
                got = self.broker.exchange(self.proc_id, self.order.next(), want, ops)
            except redis.RedisError as exc:
                slots.land([])
                self.pending.put_back(ops)
                self.trouble(exc)
                time.sleep(backoff.next())
                continue
            backoff.reset()
            slots.land(got)
            if signals is not None:
                signals.fetch_landed.fire(len(got))
            if got:
                continue
            self._idle_wait(backoff)
            self._adopt()
        self._adopt()

    def _idle_wait(self, backoff: Backoff) -> None:
        """Nothing came: send queued settlements now (no fetch will carry them soon) and
        wait for work, at most ``idle_wait`` seconds."""
        slots = self.slots
        slots.idle = True
        try:
            if len(self.pending):
                self.settler.flush()
            if self.signals is not None:
                self.signals.fetcher_idle.fire(None)
            if self.claimer is not None:
                slots.await_claim(self.idle_wait)
            else:
                self.broker.wait_for_work(self.order.names, self.idle_wait)
            if self.signals is not None:
                self.signals.fetcher_woke.fire(len(slots.claimed))
        except redis.RedisError as exc:
            self.trouble(exc)
            time.sleep(backoff.current)
        finally:
            slots.idle = False

    def _adopt(self) -> None:
        if self.claimer is not None:
            self.claimer.adopt()
