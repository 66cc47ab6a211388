"""A worker process: one fetcher, ``concurrency`` executor threads, heartbeat, maintenance.

Life of a job inside the process::

    fetcher --exchange.lua--> local buffer --> executor thread --> settle op
       ^                                                             |
       +-------------- acks ride along with the next fetch <---------+

* The **fetcher** leases up to ``concurrency + prefetch - outstanding`` jobs per round
  trip (one Lua call that also applies the settlements of finished jobs). With nothing
  to fetch it blocks on Redis, so a new job is picked up in milliseconds without
  polling; ``idle_wait`` only bounds a missed wake-up. In a process with one queue, an
  idle **executor thread** blocks on the queue itself (BLMOVE into the process's claim
  list) and runs the job it gets at once, with no hand-over between threads, under a
  provisional lease field; the fetcher, woken by the claim, adopts the job into the
  lease hash (its settlement waits for the real field) and fetches more if there are.
  A process with several queues has the fetcher block on their wake-up lists (BLPOP),
  then fetch.
* Each leased job sits in ``{ns}:lease:<proc>`` until settled. The **heartbeat**
  refreshes ``{ns}:alive:<proc>`` every ``lease_seconds / 4``; if the process dies,
  any live process's reaper returns those jobs to their queues. Each beat also returns
  leased jobs the process does not know about (a fetch reply lost to a connection
  reset) once they were unknown at two beats in a row.
* Settlements are batched: a finished job's ack is sent with the next fetch, or at
  once when the fetcher is idle or quiet. A crash before an ack is sent re-delivers
  the job (at-least-once; ReconciledJobs make that re-delivery a no-op). A settlement
  applies only while its lease is held, so a late or repeated one is a no-op.

Signals (installed by :meth:`Worker.run` in the main thread):

* ``TERM``/``INT``: stop fetching, push buffered jobs back, wait up to
  ``shutdown_timeout`` for running ones, then push back whatever still runs and exit.
* ``TSTP``: quiet: stop fetching, keep running what is held.
* ``TTIN``: log the stack of every thread.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

import redis

from ..broker import Broker, Delivery, SettleKind, SettleOp, get_broker
from ..broker.broker import suspect_threshold
from ..config import Settings, mask_url
from ..scheduler.poller import Maintenance
from .executor import Executor
from .queues import QueueOrder, QueueSpec

log = logging.getLogger("reconcile.worker")

SUSPECT_MARK = b'"recovered":'
"""Stamped by reap.lua on a job returned from a crashed worker."""

MAX_FETCH = 1000
"""Most jobs leased in one round trip (bounds the Lua call's argument stack)."""

EXECUTOR_EXIT_WAIT = 2.0
"""Seconds stop() waits, at its end, for its idle executor threads to end (and return
their held database connections)."""


class Settlements:
    """Settle ops of finished jobs, waiting to ride along with the next fetch."""

    def __init__(self) -> None:
        self._ops: list[SettleOp] = []
        self._lock = threading.Lock()

    def add(self, op: SettleOp) -> None:
        with self._lock:
            self._ops.append(op)

    def add_all(self, ops: list[SettleOp]) -> None:
        with self._lock:
            self._ops.extend(ops)

    def take(self) -> list[SettleOp]:
        with self._lock:
            ops, self._ops = self._ops, []
        return ops

    def put_back(self, ops: list[SettleOp]) -> None:
        with self._lock:
            self._ops[:0] = ops

    def fields(self) -> set[bytes]:
        with self._lock:
            return {op.field for op in self._ops}

    def __len__(self) -> int:
        return len(self._ops)


class Worker:
    """One worker process. ``run()`` blocks (CLI); ``start()``/``stop()`` embed it (tests)."""

    def __init__(
        self,
        settings: Settings,
        queues: list[QueueSpec],
        *,
        strict: bool = False,
        broker: Broker | None = None,
    ) -> None:
        self.settings = settings
        self.broker = broker or get_broker(settings)
        self.order = QueueOrder(queues, strict)
        self.concurrency = settings.concurrency
        self.capacity = settings.concurrency + settings.effective_prefetch
        # While the buffer still feeds the threads, fetch only once this many jobs fit:
        # a batch per round trip, not one job per finished job (slow jobs finish one
        # at a time; each fetch would otherwise carry a single job and a single ack)
        self.refill = max(1, settings.effective_prefetch // 2)
        self.proc_id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.executor = Executor(settings, self.broker)
        self.suspect_at = suspect_threshold(settings.max_recoveries)
        self.maintenance = Maintenance(settings, self.broker)
        self.settlements = Settlements()
        self.started_at = time.time()

        self._buffer: collections.deque[Delivery] = collections.deque()
        mutex = threading.RLock()
        # _cond: capacity, running jobs, fetch state (fetcher, stop, isolation wait on it);
        # _work: jobs in the buffer (executor threads wait on it, and are woken one per
        # job instead of all at once)
        self._cond = threading.Condition(mutex)
        self._work = threading.Condition(mutex)
        # single queue: idle pickup by an executor thread's BLMOVE (see the module docstring)
        self._claim_queue = self.order.names[0] if len(self.order.names) == 1 else None
        self._claim_duty = False  # posted by the idle fetcher, taken by one executor thread
        self._claimer = False  # an executor thread waits in a claim
        self._claimed: list[tuple[bytes, bytes]] = []  # (provisional field, payload) to adopt
        self._claims = 0  # claimed deliveries whose provisional field is not yet resolved
        self._claim_seq = 0
        self._aliases: dict[bytes, bytes | None] = {}  # provisional -> lease field (None: lost)
        self._alias_lock = threading.Lock()
        self._outstanding = 0  # buffered + running, guarded by _cond
        self._running: dict[bytes, Delivery] = {}
        self._idle = False
        self._isolating = False  # a suspect (recovered) job runs alone; guarded by _cond
        self._fetching = False  # an exchange is in flight; guarded by _cond
        self._quiet = threading.Event()  # no new fetches
        self._stopping = threading.Event()  # threads wind down
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_redis_error = 0.0
        self._suspects: set[bytes] = set()  # lease fields unknown locally at the last beat

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Register, then start the fetcher, executors, heartbeat and maintenance threads."""
        policy = self.broker.eviction_policy()
        if policy is not None and policy != "noeviction":
            log.warning(
                "Redis maxmemory-policy is %r, not 'noeviction': Redis may evict queued jobs. "
                "Plain jobs evicted this way are lost; ReconciledJobs are re-derived by the "
                "next pass. Set maxmemory-policy noeviction.", policy,
            )
        try:
            self.broker.heartbeat(self.proc_id, self._info())
        except redis.OutOfMemoryError as exc:
            # Redis is full (noeviction): start anyway, draining the queues is what frees
            # memory; the heartbeat registers this process as soon as a write is accepted.
            log.warning("cannot register in Redis yet (%s); starting, registration retried "
                        "by the heartbeat", exc)
        spawn: list[tuple[str, Callable[[], None]]] = [
            ("reconcile-fetcher", self._fetch_loop),
            ("reconcile-heartbeat", self._heartbeat_loop),
            ("reconcile-maintenance", lambda: self.maintenance.run(self._stopping)),
            ("reconcile-watchdog", self._watchdog_loop),
        ]
        spawn += [(f"reconcile-exec-{i}", self._exec_loop) for i in range(self.concurrency)]
        for name, target in spawn:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        log.info(
            "worker %s started: queues %s (%s), concurrency %d, Redis %s namespace %s",
            self.proc_id, ",".join(f"{s.name}:{s.weight}" for s in self.order.specs),
            "strict" if self.order.strict else "weighted", self.concurrency,
            mask_url(self.settings.redis_url), self.settings.namespace,
        )

    def wait_for_servers(self, stop: threading.Event) -> bool:
        """Before :meth:`start` (``reconcile worker``): wait until Redis answers, and
        PostgreSQL too if a ReconciledJob of this worker's queues is registered. A server
        not there yet (refused, unknown host, timeout) is waited for, like Sidekiq and
        Celery do, with one log line saying what for; a permanent failure (credentials,
        TLS, ACL permission, missing database) is raised for the CLI to report. Returns
        False if ``stop`` was set while waiting."""
        from .. import registry
        from ..reconciled import ReconciledJob
        from ..startup import wait_for_servers
        from ..store.engine import check_connection, get_engine

        checks: list[tuple[str, Callable[[], object]]] = [
            (f"Redis at {mask_url(self.settings.redis_url)}", self.broker.ping)]
        names = set(self.order.names)
        if any(issubclass(c, ReconciledJob) and c.queue in names
               for c in registry.all_classes().values()):
            engine = get_engine(self.settings)
            checks.append((f"PostgreSQL at {mask_url(self.settings.database_url)}",
                           lambda: check_connection(engine)))
        return wait_for_servers(self.settings, checks, stop, f"worker {self.proc_id}")

    def run(self) -> None:
        """Start, install signal handlers, and block until TERM/INT completes shutdown."""
        stop_requested = threading.Event()

        def on_term(signum: int, frame: FrameType | None) -> None:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            stop_requested.set()

        def on_tstp(signum: int, frame: FrameType | None) -> None:
            log.info("received TSTP: quiet, no new jobs will be fetched")
            self.quiet()

        def on_ttin(signum: int, frame: FrameType | None) -> None:
            self.dump_threads()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGTSTP, on_tstp)
        signal.signal(signal.SIGTTIN, on_ttin)
        if not self.wait_for_servers(stop_requested):
            return  # stopped while waiting: nothing was registered or leased
        self.start()
        while not stop_requested.wait(0.5):
            pass
        self.stop()

    def quiet(self) -> None:
        """Stop fetching new jobs; running and buffered jobs still complete."""
        self._quiet.set()
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float | None = None) -> int:
        """Graceful stop; returns how many jobs were pushed back to their queues (those
        Redis took: if it failed, the rest return when their lease expires, logged).

        Buffered jobs go back at once; running jobs get ``timeout`` (default
        ``shutdown_timeout``) seconds; then everything still leased goes back and the
        process unregisters.
        """
        if self._stopped.is_set():
            return 0  # already stopped: a second stop (signal, then finally) is a no-op
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        self.quiet()
        fetcher = self._threads[0] if self._threads else None
        if fetcher is not None:
            # Wait for what the fetcher leases to land: an in-flight fetch, and (one
            # queue) the adoption of a job claimed just before quiet, which the fetcher
            # does on its way out (quiet() woke it); until then that job's ack cannot be
            # resolved, and release.lua below would push the finished job back. An idle
            # fetcher blocked on wake-up lists (several queues) leases nothing before it
            # sees quiet: don't wait for it.
            deadline = time.monotonic() + self.settings.idle_wait + 2
            claims = self._claim_queue is not None
            while fetcher.is_alive() and (claims or not self._idle) and time.monotonic() < deadline:
                fetcher.join(0.02)
        # An executor thread waiting in a claim (BLMOVE) could still take a job, which
        # release.lua, run below, would then miss: end its wait (it hands a job taken
        # meanwhile back itself, seeing quiet) and wait until it is out.
        deadline = time.monotonic() + self.settings.idle_wait + 2
        with self._cond:
            while self._claimer and time.monotonic() < deadline:
                self._cond.release()
                try:
                    self.broker.unblock(self.proc_id)
                except redis.RedisError:
                    pass  # the wait ends by itself within idle_wait
                finally:
                    self._cond.acquire()
                self._cond.wait(0.02)
        with self._cond:
            buffered = list(self._buffer)
            self._buffer.clear()
            self._outstanding -= len(buffered)
            self._cond.notify_all()
        ops = self.settlements.take()
        ops += [SettleOp.push_back(d.field, d.queue, d.raw) for d in buffered]
        self._settle(ops)
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._outstanding > 0 and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            unfinished = self._outstanding
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
            self._work.notify_all()
        self._settle(self.settlements.take())
        # What Redis never took (it kept failing): those jobs are still in our lease
        # hash, as are the running ones if the release below fails too.
        unwritten = self.settlements.take()
        released = self._release()
        lost_q = sum(1 for op in unwritten if op.kind is SettleKind.PUSH_BACK)
        if released is None:
            log.error(
                "worker %s could not push its jobs back to Redis at shutdown (releasing the "
                "leases failed%s): they stay leased until the lease expires (lease_seconds=%g s "
                "without a heartbeat), then a live worker's reaper returns them to their "
                "queues; finished jobs among them run again",
                self.proc_id, f"; {len(unwritten)} settlements not written" if unwritten else "",
                self.settings.lease_seconds,
            )
        elif unwritten:
            log.error("worker %s could not write %d settlements at shutdown: their jobs were "
                      "pushed back to their queues with the rest, so finished ones run again",
                      self.proc_id, len(unwritten))
        pushed = (released or 0) + len(buffered) - lost_q
        if unfinished:
            log.warning("%d jobs still running after %.1fs%s", unfinished, timeout,
                        "" if released is None else ": pushed back to their queues")
        else:
            # every executor thread is idle and ends at once: waiting for them returns
            # their held database connections to the pool before stop() does (threads
            # still running jobs past the timeout are daemons, left to finish)
            exit_by = time.monotonic() + EXECUTOR_EXIT_WAIT
            for t in self._threads:
                if t.name.startswith("reconcile-exec") and t is not threading.current_thread():
                    t.join(max(0.0, exit_by - time.monotonic()))
        log.info("worker %s stopped (%d jobs pushed back)", self.proc_id, pushed)
        self._stopped.set()
        return pushed

    @staticmethod
    def _retrying(what: str, call: Callable[[], int]) -> int | None:
        """``call()`` tried up to 5 times, pausing 0.2, 0.4 ... s after each Redis error
        (logged with ``what``); None if every attempt failed."""
        for attempt in range(5):
            try:
                return call()
            except redis.RedisError as exc:
                log.warning("could not %s (%s), attempt %d", what, exc, attempt + 1)
                time.sleep(0.2 * (attempt + 1))
        return None

    def _release(self) -> int | None:
        """Push every job still leased back to its queue; how many, None if Redis failed."""
        return self._retrying("release leases", lambda: self.broker.release(self.proc_id))

    def _settle(self, ops: list[SettleOp]) -> None:
        ops = self._resolve(ops)
        if not ops:
            return
        if self._retrying(f"settle {len(ops)} jobs", lambda: self.broker.settle(self.proc_id, ops)) is None:
            # never drop a settlement: the next fetch (or stop) carries it
            self.settlements.put_back(ops)

    # -- threads ---------------------------------------------------------------------

    def _fetch_loop(self) -> None:
        backoff = 0.05
        while not self._quiet.is_set():
            with self._cond:
                while self._fetch_must_wait() and not self._quiet.is_set():
                    self._cond.wait(0.5)
                want = min(self.capacity - self._outstanding, MAX_FETCH)
                self._fetching = True
            if self._quiet.is_set():
                self._end_fetch([])
                self._adopt_claims()
                break
            ops = self._resolve(self.settlements.take())
            try:
                got = self.broker.exchange(self.proc_id, self.order.next(), want, ops)
            except redis.RedisError as exc:
                self._end_fetch([])
                self.settlements.put_back(ops)
                self._redis_trouble(exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            self._end_fetch(got)
            if got:
                continue
            self._idle = True
            try:
                if len(self.settlements):
                    self._settle(self.settlements.take())
                if self._claim_queue is not None:
                    self._await_claim()
                else:
                    self.broker.wait_for_work(self.order.names, self.settings.idle_wait)
            except redis.RedisError as exc:
                self._redis_trouble(exc)
                time.sleep(backoff)
            finally:
                self._idle = False
            self._adopt_claims()
        self._adopt_claims()

    def _await_claim(self) -> None:
        """The idle fetcher of a single-queue process: post the claim duty to an executor
        thread and sleep until a claimed job needs adopting, quiet, or ``idle_wait``."""
        deadline = time.monotonic() + self.settings.idle_wait
        with self._cond:
            if not self._claimer:
                self._claim_duty = True
                self._work.notify()
            while not self._claimed and not self._quiet.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._claim_duty = False

    def _adopt_claims(self) -> None:
        """Adopt the jobs executor threads claimed into the lease hash (with more jobs if
        there is room), and give their provisional fields the real ones. If Redis is
        unreachable, retried with backoff; the jobs stay safe in the claim list."""
        with self._cond:
            claimed, self._claimed = self._claimed, []
            if not claimed:
                return
            self._fetching = True  # an isolating thread waits for the adoption
        queue = self._claim_queue
        assert queue is not None
        backoff = 0.05
        while True:
            with self._cond:
                room = self.capacity - self._outstanding
                busy = self._isolating or self._quiet.is_set()
                want = 0 if busy else max(0, min(room, MAX_FETCH))
            ops = self._resolve(self.settlements.take())
            try:
                got = self.broker.exchange(self.proc_id, self.order.next(), want, ops, adopt=queue)
                break
            except redis.RedisError as exc:
                self.settlements.put_back(ops)
                self._redis_trouble(exc)
                if self._stopping.is_set():
                    # release.lua returns the claims; their settlements are dropped
                    got = []
                    break
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        fields: dict[bytes, bytes | None] = {}
        rest: list[Delivery] = []
        pending = {raw: provisional for provisional, raw in claimed}
        for d in got:
            provisional = pending.pop(d.raw, None)
            if provisional is not None:
                fields[provisional] = d.field
            else:
                rest.append(d)
        for provisional in pending.values():
            # not in the claim list any more: a reply lost and the call retried (the job
            # sits in the lease hash under a field we never saw, and the orphan sweep
            # pushes it back: at-least-once), or released at shutdown. Its settlement
            # is dropped.
            log.warning("a claimed job was not found at adoption; it is pushed back to its queue")
            fields[provisional] = None
        with self._alias_lock:
            self._aliases.update(fields)
        self._end_fetch(rest)

    def _claim(self) -> Delivery | None:
        """Executor thread on claim duty: block in a claim (BLMOVE). A job taken is run
        by this thread at once (or, if recovered from a crash, buffered to run alone);
        a job taken while the process goes quiet is handed back to its queue."""
        queue = self._claim_queue
        assert queue is not None
        raw: bytes | None = None
        # stay blocked in Redis while nothing comes, so an idle process always has a
        # thread waiting on its queue (the fetcher's own wait is only a safety net)
        while raw is None and not self._quiet.is_set():
            try:
                raw = self.broker.claim(self.proc_id, queue, self.settings.idle_wait)
            except redis.RedisError as exc:
                self._redis_trouble(exc)
                self._quiet.wait(0.5)
        with self._cond:
            self._claimer = False
            self._cond.notify_all()  # stop() may wait for the claim to end
            if raw is None:
                return None
            if self._quiet.is_set():
                handed_back = True
            else:
                handed_back = False
                self._claim_seq += 1
                provisional = b"~%d|%s" % (self._claim_seq, queue.encode())
                with self._alias_lock:
                    self._claims += 1
                d = Delivery(provisional, queue, raw)
                self._claimed.append((provisional, raw))
                self._outstanding += 1
                if self._is_suspect(raw):
                    self._buffer.append(d)
                    self._work.notify()
                    return None
                self._running[provisional] = d
                return d
        if handed_back:
            self._unclaim(queue)
        return None

    def _unclaim(self, queue: str) -> None:
        # if every attempt fails the job stays in the claim list, where release.lua at
        # shutdown, or a reaper, returns it
        self._retrying("hand a claimed job back", lambda: self.broker.unclaim(self.proc_id, queue))

    def _resolve(self, ops: list[SettleOp]) -> list[SettleOp]:
        """Swap provisional lease fields for the adopted ones; settlements of claims not
        yet adopted go back to wait (the fetcher adopts right after claiming)."""
        if not self._claims:
            return ops
        out: list[SettleOp] = []
        waiting: list[SettleOp] = []
        with self._alias_lock:
            for op in ops:
                if op.field[:1] == b"~":
                    if op.field not in self._aliases:
                        waiting.append(op)
                        continue
                    real = self._aliases.pop(op.field)
                    self._claims -= 1
                    if real is None:
                        continue
                    op = op._replace(field=real)
                out.append(op)
        if waiting:
            self.settlements.put_back(waiting)
        return out

    def _end_fetch(self, got: list[Delivery]) -> None:
        with self._cond:
            self._buffer.extend(got)
            self._outstanding += len(got)
            self._fetching = False
            self._cond.notify_all()
            if got:
                self._work.notify(len(got))

    def _exec_loop(self) -> None:
        from ..store.engine import holding_connections  # opens nothing until a ReconciledJob runs

        with holding_connections():
            self._execute_buffered()

    def _execute_buffered(self) -> None:
        while True:
            suspect = False
            claiming = False
            with self._cond:
                while (not self._buffer or self._isolating) and not self._stopping.is_set():
                    if self._claim_duty and not self._isolating and not self._quiet.is_set():
                        self._claim_duty = False
                        self._claimer = claiming = True
                        break
                    self._work.wait(1.0)
                if not claiming:
                    if not self._buffer:
                        return
                    d = self._buffer.popleft()
                    if self._is_suspect(d.raw):
                        suspect = True
                        self._isolate()
                    self._running[d.field] = d
            if claiming:
                got = self._claim()
                if got is None:
                    continue
                d = got
            op = self.executor.run(d)
            if d.field in self.executor.abandoned:
                # the watchdog settled this delivery and started a replacement thread
                self.executor.abandoned.discard(d.field)
                return
            self.settlements.add(op)
            if self._idle or self._quiet.is_set():
                # no fetch will carry this ack (idle, or quiet: the fetcher has exited).
                # Sent before the job stops counting as outstanding, so that stop() cannot
                # release the lease (and requeue the finished job) while the ack is in flight.
                self._settle(self.settlements.take())
            with self._cond:
                del self._running[d.field]
                self._outstanding -= 1
                if suspect:
                    self._isolating = False
                    self._work.notify_all()
                if suspect or self._worth_waking():
                    self._cond.notify_all()

    def _fetch_must_wait(self) -> bool:
        """With ``_cond`` held: whether the fetcher must wait before fetching: no room,
        a suspect job running alone, or, while the buffer still feeds the threads, less
        room than a batch (``refill`` slots)."""
        room = self.capacity - self._outstanding
        return room <= 0 or self._isolating or (bool(self._buffer) and room < self.refill)

    def _worth_waking(self) -> bool:
        """With ``_cond`` held, after a job finished: whether a thread waiting on
        ``_cond`` may now go on: the fetcher (:meth:`_fetch_must_wait`), ``stop()`` and
        an isolating thread waiting for the running jobs to end; a quiet process wakes
        everyone. Waking the fetcher for every finished job instead cost a thread switch
        and a GIL hand-over per job (it went back to sleep 7 times in 8 with the default
        prefetch)."""
        return not self._fetch_must_wait() or not self._running or self._quiet.is_set()

    def _is_suspect(self, raw: bytes) -> bool:
        """A job recovered from crashed workers often enough to run alone."""
        return SUSPECT_MARK in raw and self._recoveries(raw) >= self.suspect_at

    @staticmethod
    def _recoveries(raw: bytes) -> int:
        """The last ``"recovered":<n>`` reap.lua appended (0 if malformed)."""
        tail = raw[raw.rfind(SUSPECT_MARK) + len(SUSPECT_MARK):].rstrip(b"}")
        return int(tail) if tail.isdigit() else 0

    def _isolate(self) -> None:
        """Called with ``_cond`` held, for a job the reaper recovered from a crashed worker:
        it may be a poison pill, so it runs alone. Buffered jobs go back to their queues
        and running ones finish first; if this job then kills the process, no other job
        is in its lease to be counted as recovered with it."""
        self._isolating = True
        # wait for running jobs and for a fetch in flight (its jobs land in the buffer)
        while (self._running or self._fetching) and not self._stopping.is_set():
            self._cond.wait(0.1)
        buffered = list(self._buffer)
        self._buffer.clear()
        self._outstanding -= len(buffered)
        if buffered:
            self.settlements.add_all([SettleOp.push_back(b.field, b.queue, b.raw) for b in buffered])
        self._cond.release()
        try:
            self._settle(self.settlements.take())  # the push-backs, before the suspect runs
        finally:
            self._cond.acquire()

    def _watchdog_loop(self) -> None:
        """Give up jobs that exceed their class's ``timeout`` (checked 4 times a second)."""
        while not self._stopping.wait(0.25):
            for a in self.executor.expired(time.monotonic()):
                op = self.executor.give_up(a)
                if op is None:
                    continue
                log.error("%s jid=%s exceeded its timeout of %s s: given up (%s)",
                          a.cls.job_name, a.payload.get("jid"), a.cls.timeout, op.kind.name.lower())
                self._settle([op])
                with self._cond:
                    self._running.pop(a.delivery.field, None)
                    self._outstanding -= 1
                    self._cond.notify_all()
                # the stuck thread cannot be stopped; a new one keeps the concurrency
                t = threading.Thread(target=self._exec_loop, name="reconcile-exec-r", daemon=True)
                t.start()
                self._threads.append(t)

    def _heartbeat_loop(self) -> None:
        interval = self.settings.lease_seconds / 4
        while not self._stopping.wait(interval):
            counts = self.executor.take_counts()
            try:
                self.broker.heartbeat(self.proc_id, self._info())
                for name, n in counts.items():
                    self.broker.incr_counter(name, n)
                counts = {}
                self._sweep_orphans()
            except redis.RedisError as exc:
                self._redis_trouble(exc)
                for name, n in counts.items():
                    self.executor.count(name, n)

    def _sweep_orphans(self) -> int:
        """Push back leases this process holds in Redis but knows nothing about.

        A fetch whose reply was lost (a connection reset after the script ran, which
        redis-py then retries) leaves jobs in our lease hash that no thread will ever
        run; a settlement given up after repeated Redis errors leaves finished jobs
        there. The heartbeat keeps such a lease alive, so no reaper would return them.
        A field unknown locally at two heartbeats in a row goes back to its queue
        (at-least-once: a late settlement of it is skipped by ``fetch.lua``).
        """
        fields = self.broker.lease_fields(self.proc_id)
        with self._cond:
            known = {d.field for d in self._buffer}
            known.update(self._running)
        known |= self.settlements.fields()
        # claimed deliveries are known by their provisional field until settled
        with self._alias_lock:
            known |= {f for f in self._aliases.values() if f is not None}
        unknown = fields - known
        confirmed = sorted(unknown & self._suspects)
        self._suspects = unknown - set(confirmed)
        if not confirmed:
            return 0
        raws = self.broker.leased_payloads(self.proc_id, confirmed)
        ops = [
            SettleOp.push_back(f, f.split(b"|", 1)[1].decode(), raw)
            for f, raw in zip(confirmed, raws, strict=True) if raw is not None
        ]
        log.warning("%d leased jobs unknown to this process (a lost fetch reply?): "
                    "pushed back to their queues", len(ops))
        self._settle(ops)
        return len(ops)

    # -- helpers ---------------------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        return {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "beat": time.time(),
            "queues": ",".join(self.order.names),
            "concurrency": self.concurrency,
            "busy": len(self._running),
            "quiet": int(self._quiet.is_set()),
        }

    @property
    def busy(self) -> int:
        return len(self._running)

    def _redis_trouble(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_redis_error > 5:
            self._last_redis_error = now
            log.warning("Redis unavailable (%s); retrying with backoff", exc)

    def dump_threads(self) -> None:
        frames = sys._current_frames()
        for t in threading.enumerate():
            frame = frames.get(t.ident or -1)
            stack = "".join(traceback.format_stack(frame)) if frame else "(no frame)"
            log.warning("thread %s:\n%s", t.name, stack)
