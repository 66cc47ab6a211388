"""Executor threads: take a turn from the slots, run the job, queue its settlement.

``concurrency`` threads (``reconcile-exec-<i>``) run :meth:`Runner.loop`. A turn is a
buffered job, or (single queue, idle) the claim duty: block in a claim and run what
comes at once (``claim.py``). The job runs through :class:`~.executor.Executor`
(one delivery in, one settle op out); the op is queued to ride with the next fetch,
or sent at once when no fetch will come soon (fetcher idle, or the process quiet).

A suspect job (recovered from crashed workers too often) runs alone: the turn hands
over the buffered jobs taken out for it, and they are pushed back before it runs.
Each thread holds its database connection between deliveries
(``store.engine.holding_connections``), returned when the thread ends.
"""

from __future__ import annotations

from ..broker import Delivery, SettleOp
from ..store.engine import holding_connections
from .claim import Claimer
from .executor import Executor
from .settlements import Settlements, Settler
from .slots import Slots, Turn


class Runner:
    """The loop shared by every executor thread of one process."""

    def __init__(
        self, slots: Slots, executor: Executor, pending: Settlements, settler: Settler,
        claimer: Claimer | None,
    ) -> None:
        self.slots = slots
        self.executor = executor
        self.pending = pending
        self.settler = settler
        self.claimer = claimer

    def loop(self) -> None:
        """An executor thread's target: run turns until stopping with an empty buffer
        (or until the watchdog gave up this thread's job and replaced the thread)."""
        with holding_connections():  # opens nothing until a ReconciledJob runs
            self._turns()

    def _turns(self) -> None:
        slots, executor, pending = self.slots, self.executor, self.pending
        finished: bytes | None = None  # the job this thread ran last, given back by take()
        suspect = False
        while True:
            turn = slots.take(finished, suspect)
            finished = None
            if turn is None:
                return
            suspect = False
            # a common turn is the Delivery itself (an exact class test, cheaper than
            # isinstance: this runs once per job); the rare turns are a Turn
            if type(turn) is Delivery:
                d = turn
            else:
                assert isinstance(turn, Turn)
                if turn.delivery is None:
                    assert self.claimer is not None, "claim duty is only posted with one queue"
                    claimed = self.claimer.claim()
                    if claimed is None:
                        continue
                    d = claimed
                else:
                    d, suspect = turn.delivery, turn.suspect
                    pending.add_all([SettleOp.push_back(b.field, b.queue, b.raw) for b in turn.pushed_back])
                    self.settler.flush()  # the push-backs, before the suspect runs
            op = executor.run(d)
            if d.field in executor.abandoned:
                # the watchdog settled this delivery and started a replacement thread
                executor.abandoned.discard(d.field)
                return
            pending.add(op)
            if slots.idle or slots.quiet.is_set():
                # no fetch will carry this ack (idle, or quiet: the fetcher has exited).
                # Sent before the job stops counting as outstanding, so that stop() cannot
                # release the lease (and requeue the finished job) while the ack is in flight.
                self.settler.flush()
            finished = d.field  # its slot is given back by the next take()
