"""Named signals a worker fires at the points tests need to wait for (like River's
``TestSignals``), so tests wait on events instead of polling private state or sleeping.

Off by default: a :class:`~reconcile.worker.Worker` built without ``signals=`` holds
``None`` and every firing point costs one ``is not None`` check, outside any lock on
the job path. A test turns them on::

    signals = WorkerSignals()
    worker = Worker(settings, queues, signals=signals)
    worker.start()
    signals.claim_waiting.wait()        # an executor thread now blocks in its claim
    Job.perform_async(1)
    signals.adopted.wait()              # the fetcher adopted it into the lease hash

Each :class:`TestSignal` queues what it is fired with (up to :data:`KEEP` values; the
oldest go first) and :meth:`TestSignal.wait` consumes one, so a test that waits for
the n-th occurrence waits n times. :meth:`TestSignal.clear` forgets earlier firings
before the step a test wants to observe. :meth:`TestSignal.hold` makes the thread that
fires the signal stop there until :meth:`TestSignal.release` (at most
:data:`HOLD_LIMIT` seconds), to widen a race window on purpose.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

KEEP = 10_000
"""Values a signal keeps until a test consumes them (a test that never waits on a busy
signal must not grow memory without bound)."""

HOLD_LIMIT = 30.0
"""Seconds a held signal keeps the firing thread at most (a test that forgets to
release it does not hang the worker forever)."""

DEFAULT_TIMEOUT = 10.0
"""Seconds :meth:`TestSignal.wait` waits by default before failing the test."""


class TestSignal(Generic[T]):
    """One named point in the worker; see the module docstring."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, name: str) -> None:
        self.name = name
        self.fired = 0
        """How many times the worker fired it since the worker was built."""
        self._values: collections.deque[T] = collections.deque(maxlen=KEEP)
        self._cond = threading.Condition()
        self._hold: threading.Event | None = None
        self._hold_match: Callable[[T], bool] | None = None

    def fire(self, value: T) -> None:
        """Called by the worker: queue ``value``, wake waiters, and stop here if held."""
        with self._cond:
            self._values.append(value)
            self.fired += 1
            self._cond.notify_all()
        hold, match = self._hold, self._hold_match
        if hold is not None and (match is None or match(value)):
            hold.wait(HOLD_LIMIT)

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> T:
        """Consume the oldest value fired and not yet consumed, waiting up to ``timeout``
        seconds for one; raises :class:`TimeoutError` naming the signal."""
        return self.wait_for(lambda _: True, timeout)

    def wait_for(self, match: Callable[[T], bool], timeout: float = DEFAULT_TIMEOUT) -> T:
        """Consume values until one satisfies ``match`` and return it (those before it
        are dropped); raises :class:`TimeoutError` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._values:
                    value = self._values.popleft()
                    if match(value):
                        return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"worker signal {self.name!r} not fired within {timeout} s")
                self._cond.wait(left)

    def clear(self) -> None:
        """Forget the values fired so far (``fired`` keeps counting)."""
        with self._cond:
            self._values.clear()

    def hold(self, match: Callable[[T], bool] | None = None) -> None:
        """From now on, a thread firing this signal (with a value satisfying ``match``,
        if given) waits there until :meth:`release`."""
        self._hold_match = match
        self._hold = threading.Event()

    def release(self) -> None:
        """Let held threads go on; later firings no longer stop."""
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.set()


@dataclass(eq=False)
class WorkerSignals:
    """The signals one worker fires, by name. Values say how many jobs where it matters."""

    __test__ = False

    fetcher_idle: TestSignal[None] = field(default_factory=lambda: TestSignal("fetcher_idle"))
    """The fetcher found nothing to fetch and now waits: it posted the claim duty (one
    queue) or blocks on the wake-up lists (several queues)."""

    fetcher_woke: TestSignal[int] = field(default_factory=lambda: TestSignal("fetcher_woke"))
    """The idle fetcher's wait ended (still marked idle): the value is how many claimed
    jobs wait for adoption (0: woken by a wake-up token, quiet, or ``idle_wait``)."""

    fetcher_waits: TestSignal[None] = field(default_factory=lambda: TestSignal("fetcher_waits"))
    """The fetcher waits for room before fetching (no room, a suspect job running alone,
    or less room than a batch while the buffer still feeds the threads)."""

    fetch_landed: TestSignal[int] = field(default_factory=lambda: TestSignal("fetch_landed"))
    """An exchange's reply is in the buffer: the value is how many jobs it leased
    (also fired after an adoption, with the jobs leased beside the adopted ones)."""

    claim_waiting: TestSignal[None] = field(default_factory=lambda: TestSignal("claim_waiting"))
    """An executor thread took the claim duty and is about to block in its claim
    (BLMOVE on the process's only queue)."""

    adopted: TestSignal[int] = field(default_factory=lambda: TestSignal("adopted"))
    """This many claimed jobs were adopted: their settlements can now be sent."""

    quiet: TestSignal[None] = field(default_factory=lambda: TestSignal("quiet"))
    """:meth:`Worker.quiet` was called (TSTP, or the start of :meth:`Worker.stop`)."""

    stopped: TestSignal[int] = field(default_factory=lambda: TestSignal("stopped"))
    """:meth:`Worker.stop` finished: the value is how many jobs it pushed back."""
