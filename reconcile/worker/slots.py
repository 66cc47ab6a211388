"""The process's job slots: buffer, outstanding count, running jobs, and the two
conditions every thread of a worker waits on. Sole owner of those conditions.

``capacity = concurrency + prefetch`` slots. A job takes a slot when it is leased (a
fetch or a claim) and gives it back when it is settled locally (finished, given up by
the watchdog, or pushed back). The threads meet here:

* the **fetcher** waits for room (:meth:`Slots.wait_for_room`), lands a fetch's jobs
  (:meth:`Slots.land`), and, idle in a single-queue process, posts the claim duty and
  waits for a claimed job to adopt (:meth:`Slots.await_claim`);
* **executor threads** take a turn (:meth:`Slots.take`: a buffered job, or the claim
  duty), end a claim (:meth:`Slots.end_claim`), and give their slot back
  (:meth:`Slots.finish`);
* ``stop()`` drains the buffer and waits for running jobs; the watchdog gives up a
  stuck job's slot (:meth:`Slots.abandon`); the heartbeat reads the known fields.

One ``RLock`` guards every field below; two conditions share it so that a job landing
in the buffer wakes one executor thread per job (``_work``) while capacity and fetch
state changes wake the fetcher, ``stop()`` and an isolating thread (``_changed``).
Each critical section is one the job path needs anyway: two acquisitions per fetch
(wait for room, land), two per job (take, finish).

A job the reaper recovered from crashed workers ``max_recoveries`` times or more (see
:func:`suspect_check`) may be a poison pill: it runs alone (:meth:`Slots.take`
isolates it), so that if it kills the process no other job is in the lease to be
counted as recovered with it.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from ..broker import Delivery
from .testsignals import WorkerSignals

MAX_FETCH = 1000
"""Most jobs leased in one round trip (bounds the Lua call's argument stack)."""

SUSPECT_MARK = b'"recovered":'
"""Stamped by reap.lua on a job returned from a crashed worker."""


def recoveries(raw: bytes) -> int:
    """The last ``"recovered":<n>`` reap.lua appended to ``raw`` (0 if malformed)."""
    tail = raw[raw.rfind(SUSPECT_MARK) + len(SUSPECT_MARK):].rstrip(b"}")
    return int(tail) if tail.isdigit() else 0


def suspect_check(threshold: int) -> Callable[[bytes], bool]:
    """A test for payloads recovered from crashed workers ``threshold`` times or more
    (such a job runs alone). The substring test keeps it free for ordinary jobs."""

    def is_suspect(raw: bytes) -> bool:
        return SUSPECT_MARK in raw and recoveries(raw) >= threshold

    return is_suspect


class Turn(NamedTuple):
    """What :meth:`Slots.take` gives an executor thread for the rare turns: the claim
    duty and a suspect job. A common turn is the :class:`Delivery` itself (building a
    ``Turn`` for every job was a measurable per-job cost in the drain)."""

    delivery: Delivery | None
    """The job to run; None: the thread took the claim duty (block in a claim)."""
    suspect: bool = False
    """The job runs alone: the other threads wait until it finished."""
    pushed_back: tuple[Delivery, ...] = ()
    """Buffered jobs taken out to make room for a suspect job: the thread sends their
    push-backs before running it."""


CLAIM_DUTY = Turn(None)


class Slots:
    """Buffer, outstanding and running jobs of one worker process; see the module docstring."""

    def __init__(
        self, capacity: int, refill: int, is_suspect: Callable[[bytes], bool],
        signals: WorkerSignals | None = None,
    ) -> None:
        self.capacity = capacity
        self.refill = refill
        self._is_suspect = is_suspect
        self._signals = signals
        mutex = threading.RLock()
        # _changed: capacity, running jobs, fetch and claim state (the fetcher, stop()
        # and an isolating thread wait on it); _work: jobs in the buffer and the claim
        # duty (executor threads wait on it, woken one per job instead of all at once)
        self._changed = threading.Condition(mutex)
        self._work = threading.Condition(mutex)

        # Events: set once by quiet()/stop() (process.py), read by every thread unlocked.
        self.quiet = threading.Event()
        """No new fetches or claims; running and buffered jobs still complete."""
        self.stopping = threading.Event()
        """Threads wind down: executor threads exit once the buffer is empty."""

        # Guarded by the mutex. Writers: the fetcher (land, adoption), executor threads
        # (take, end_claim, finish), stop() (drain) and the watchdog (abandon).
        self.buffer: collections.deque[Delivery] = collections.deque()
        """Leased jobs waiting for an executor thread."""
        self.outstanding = 0
        """Buffered plus running (including claimed) jobs: the slots in use."""
        self.running: dict[bytes, Delivery] = {}
        """Jobs being run, by lease field (a claimed job by its provisional field).
        ``len()`` is read unlocked by the heartbeat's ``busy`` count."""
        self.isolating = False
        """A suspect job runs alone: no fetch, no other turn. Written by its executor thread."""
        self.fetching = False
        """An exchange is in flight (its jobs will land in the buffer). Written by the fetcher."""
        self.claim_duty = False
        """Posted by the idle fetcher, taken by one executor thread (single queue)."""
        self.claimer = False
        """An executor thread waits in a claim. Set by the thread taking the duty, cleared
        when its claim returns."""
        self.claimed: list[tuple[bytes, bytes]] = []
        """(provisional field, payload) of claimed jobs the fetcher has not adopted yet.
        Appended by the claiming thread, taken by the fetcher."""

        # Written by the fetcher only, read unlocked by executor threads and stop(): a
        # stale read costs at most one ack riding with the next fetch instead of its own
        # round trip.
        self.idle = False
        """The fetcher found nothing and waits (claim duty or wake-up lists)."""

    @property
    def busy(self) -> int:
        """Jobs running now (read without the lock, for the heartbeat and metrics)."""
        return len(self.running)

    # -- lifecycle (process.py) --------------------------------------------------------

    def go_quiet(self) -> None:
        """Set ``quiet`` and wake the fetcher and anyone waiting on capacity."""
        self.quiet.set()
        with self._changed:
            self._changed.notify_all()

    def begin_stopping(self) -> None:
        """Set ``stopping`` and wake every thread, so idle executor threads exit."""
        self.stopping.set()
        with self._changed:
            self._changed.notify_all()
            self._work.notify_all()

    def drain(self) -> list[Delivery]:
        """Take every buffered job out (to push back); their slots are freed."""
        with self._changed:
            buffered = list(self.buffer)
            self.buffer.clear()
            self.outstanding -= len(buffered)
            self._changed.notify_all()
        return buffered

    def wait_finished(self, deadline: float) -> int:
        """Wait until no slot is in use or ``deadline`` (monotonic) passes; returns how
        many are still in use."""
        with self._changed:
            while self.outstanding > 0 and time.monotonic() < deadline:
                self._changed.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            return self.outstanding

    def wait_claimer_gone(self, deadline: float, unblock: Callable[[], None]) -> None:
        """Until ``deadline``: while an executor thread waits in a claim, call ``unblock``
        (without the lock: it is a Redis call) and wait for the claim to end."""
        with self._changed:
            while self.claimer and time.monotonic() < deadline:
                self._changed.release()
                try:
                    unblock()
                finally:
                    self._changed.acquire()
                self._changed.wait(0.02)

    def known_fields(self) -> set[bytes]:
        """Lease fields of buffered and running jobs (for the heartbeat's orphan sweep)."""
        with self._changed:
            known = {d.field for d in self.buffer}
            known.update(self.running)
        return known

    # -- the fetcher ---------------------------------------------------------------------

    def wait_for_room(self) -> int:
        """Wait until a fetch is worth it (or quiet), mark a fetch in flight, and return
        how many jobs to lease: the free slots, at most :data:`MAX_FETCH`. The fetcher
        must call :meth:`land` afterwards, even with nothing."""
        signals = self._signals
        with self._changed:
            while self._fetch_must_wait() and not self.quiet.is_set():
                if signals is not None:
                    signals.fetcher_waits.fire(None)
                self._changed.wait(0.5)
            self.fetching = True
            return min(self.capacity - self.outstanding, MAX_FETCH)

    def land(self, got: list[Delivery]) -> None:
        """A fetch (or adoption) ended: ``got`` goes to the buffer, one executor thread
        woken per job."""
        with self._changed:
            self.buffer.extend(got)
            self.outstanding += len(got)
            self.fetching = False
            self._changed.notify_all()
            if got:
                self._work.notify(len(got))

    def await_claim(self, timeout: float) -> None:
        """Idle fetcher of a single-queue process: post the claim duty to an executor
        thread (unless one already waits in a claim) and sleep until a claimed job needs
        adopting, quiet, or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            if not self.claimer:
                self.claim_duty = True
                self._work.notify()
            while not self.claimed and not self.quiet.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            self.claim_duty = False

    def take_claimed(self) -> list[tuple[bytes, bytes]]:
        """The claimed jobs to adopt; if any, a fetch is in flight until :meth:`land`
        (an isolating thread waits for the adoption)."""
        with self._changed:
            claimed, self.claimed = self.claimed, []
            if claimed:
                self.fetching = True
            return claimed

    def adoption_room(self) -> int:
        """Jobs to lease beside an adoption: the free slots (at most :data:`MAX_FETCH`),
        none while a suspect job runs alone or the process is quiet."""
        with self._changed:
            if self.isolating or self.quiet.is_set():
                return 0
            return max(0, min(self.capacity - self.outstanding, MAX_FETCH))

    # -- executor threads ----------------------------------------------------------------

    def take(self, finished: bytes | None = None, suspect: bool = False) -> Delivery | Turn | None:
        """An executor thread's next turn: a buffered job (registered as running; a
        :class:`Delivery`, or a :class:`Turn` with ``suspect`` set when it must run
        alone), the claim duty (:data:`CLAIM_DUTY`), or None once stopping with an
        empty buffer.

        ``finished`` (with its turn's ``suspect``) is the lease field of the job this
        thread just ran: its slot is given back first, in the same
        critical section, so a job costs the executor thread one acquisition of the
        lock rather than two.

        A suspect job is isolated first: the turn waits until running jobs finished and
        a fetch in flight landed, then takes every buffered job out (``pushed_back``).
        """
        with self._changed:
            if finished is not None:
                if suspect:
                    self._give_back(finished, suspect)
                else:
                    # _give_back's common case, inlined (a call less per job, measured
                    # in the drain): the slot back, the waiters woken only if worth it
                    del self.running[finished]
                    self.outstanding -= 1
                    if self._worth_waking():
                        self._changed.notify_all()
            while (not self.buffer or self.isolating) and not self.stopping.is_set():
                if self.claim_duty and not self.isolating and not self.quiet.is_set():
                    self.claim_duty = False
                    self.claimer = True
                    return CLAIM_DUTY
                self._work.wait(1.0)
            if not self.buffer:
                return None
            d = self.buffer.popleft()
            # the substring test first, inline: no call for an ordinary job
            if SUSPECT_MARK not in d.raw or not self._is_suspect(d.raw):
                self.running[d.field] = d
                return d
            self.isolating = True
            # wait for running jobs and for a fetch in flight (its jobs land in the buffer)
            while (self.running or self.fetching) and not self.stopping.is_set():
                self._changed.wait(0.1)
            buffered = tuple(self.buffer)
            self.buffer.clear()
            self.outstanding -= len(buffered)
            self.running[d.field] = d
            return Turn(d, True, buffered)

    def end_claim(
        self, raw: bytes | None, queue: str, new_field: Callable[[], bytes],
    ) -> tuple[Delivery | None, bool]:
        """The claim of an executor thread returned ``raw`` (None: nothing came).

        Returns ``(job to run now, hand back)``: a job claimed while the process went
        quiet is handed back to its queue by the caller; a suspect job is buffered (to
        run alone) instead of run; otherwise the job runs at once under the provisional
        field ``new_field()`` gives (called under the lock, so fields are unique).
        """
        with self._changed:
            self.claimer = False
            self._changed.notify_all()  # stop() may wait for the claim to end
            if raw is None:
                return None, False
            if self.quiet.is_set():
                return None, True
            provisional = new_field()
            d = Delivery(provisional, queue, raw)
            self.claimed.append((provisional, raw))
            self.outstanding += 1
            if self._is_suspect(raw):
                self.buffer.append(d)
                self._work.notify()
                return None, False
            self.running[provisional] = d
            return d, False

    def _give_back(self, field: bytes, suspect: bool) -> None:
        """With the lock held: a job ran and its settlement is queued: give its slot
        back, end an isolation, and wake waiters on capacity only when that lets one go
        on."""
        del self.running[field]
        self.outstanding -= 1
        if suspect:
            self.isolating = False
            self._work.notify_all()
        if suspect or self._worth_waking():
            self._changed.notify_all()

    # -- the watchdog --------------------------------------------------------------------

    def abandon(self, field: bytes) -> None:
        """A stuck job was given up: its slot is free though its thread still runs."""
        with self._changed:
            self.running.pop(field, None)
            self.outstanding -= 1
            self._changed.notify_all()

    # -- predicates, with the lock held --------------------------------------------------

    def _fetch_must_wait(self) -> bool:
        """Whether the fetcher must wait before fetching: no room, a suspect job running
        alone, or, while the buffer still feeds the threads, less room than a batch
        (``refill`` slots)."""
        room = self.capacity - self.outstanding
        return room <= 0 or self.isolating or (bool(self.buffer) and room < self.refill)

    def _worth_waking(self) -> bool:
        """After a job finished: whether a thread waiting on ``_changed`` may now go on:
        the fetcher (:meth:`_fetch_must_wait`), ``stop()`` and an isolating thread
        waiting for the running jobs to end; a quiet process wakes everyone. Waking the
        fetcher for every finished job would cost a thread switch and a GIL hand-over
        per job (it went back to sleep 7 times in 8 with the default prefetch)."""
        return not self._fetch_must_wait() or not self.running or self.quiet.is_set()
