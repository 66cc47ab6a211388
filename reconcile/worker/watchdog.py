"""The watchdog thread: gives up jobs that exceed their class's ``timeout``.

Four times a second it asks the executor for deliveries running past their class's
``timeout``; each is given up (the executor decides retry or dead, as for a failure)
and settled at once, and its slot is freed. A Python thread cannot be stopped, so the
stuck thread keeps running (its result is void: the executor marked the delivery
abandoned) and a new executor thread keeps the concurrency.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .executor import Executor
from .settlements import Settler
from .slots import Slots

log = logging.getLogger("reconcile.worker")

CHECK_EVERY = 0.25
"""Seconds between two looks for jobs past their timeout."""


class Watchdog:
    """Timeouts of one process (:meth:`run` is the thread's target)."""

    def __init__(
        self, executor: Executor, slots: Slots, settler: Settler,
        replace_thread: Callable[[], object],
    ) -> None:
        self.executor = executor
        self.slots = slots
        self.settler = settler
        self.replace_thread = replace_thread

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(CHECK_EVERY):
            for a in self.executor.expired(time.monotonic()):
                op = self.executor.give_up(a)
                if op is None:
                    continue
                log.error("%s jid=%s exceeded its timeout of %s s: given up (%s)",
                          a.cls.job_name, a.payload.get("jid"), a.cls.timeout, op.kind.name.lower())
                self.settler.settle([op])
                self.slots.abandon(a.delivery.field)
                self.replace_thread()
