"""A worker process: start, run, quiet, stop, the signals, and the thread table.

Life of a job inside the process::

    fetcher --fetch.lua--> slots (buffer) --> executor thread --> settlements
       ^                                                              |
       +---------------- acks ride along with the next fetch <--------+

One module per thread role or concern, each owning its state:

=================  ================================================================
``slots.py``       buffer, outstanding and running jobs; the two conditions every
                   thread waits on (their sole owner); isolation of suspect jobs
``fetcher.py``     the fetcher thread: exchange loop, idle wait, backoff
``claim.py``       single-queue idle pickup: an executor thread's BLMOVE claim, the
                   fetcher's adoption, provisional lease fields
``runner.py``      the executor threads' loop (take a turn, run, queue the settlement)
``executor.py``    one delivery in, one settle op out
``settlements.py`` queued settle ops, sending them, the shutdown release
``heartbeat.py``   the heartbeat thread: alive key, counters, orphan sweep
``watchdog.py``    the watchdog thread: jobs past their ``timeout``
``maintenance.py`` the maintenance thread: promotion and reaping
=================  ================================================================

* The **fetcher** leases up to ``concurrency + prefetch - outstanding`` jobs per round
  trip (one Lua call that also applies the settlements of finished jobs). With nothing
  to fetch it blocks on Redis, so a new job is picked up in milliseconds without
  polling; ``idle_wait`` only bounds a missed wake-up. In a process with one queue, an
  idle **executor thread** blocks on the queue itself (BLMOVE into the process's claim
  list) and runs the job it gets at once; the fetcher, woken by the claim, adopts it
  into the lease hash. A process with several queues has the fetcher block on their
  wake-up lists (BLPOP), then fetch.
* Each leased job sits in ``{ns}:lease:<proc>`` until settled. The **heartbeat**
  keeps ``{ns}:alive:<proc>`` alive; if the process dies, any live process's reaper
  returns those jobs to their queues.
* Settlements are batched: a finished job's ack is sent with the next fetch, or at
  once when the fetcher is idle or quiet. A crash before an ack is sent re-delivers
  the job (at-least-once; ReconciledJobs make that re-delivery a no-op).

Signals (installed by :meth:`Worker.run` in the main thread):

* ``TERM``/``INT``: stop fetching, push buffered jobs back, wait up to
  ``shutdown_timeout`` for running ones, then push back whatever still runs and exit.
* ``TSTP``: quiet: stop fetching, keep running what is held.
* ``TTIN``: log the stack of every thread.

Tests observe the threads through named :mod:`~reconcile.worker.testsignals`
(``Worker(..., signals=WorkerSignals())``), off by default.
"""

from __future__ import annotations

import contextlib
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

from .. import registry
from ..banner import log_banner
from ..broker import Broker, SettleKind, SettleOp, get_broker
from ..broker.broker import suspect_threshold
from ..config import Settings, mask_url
from ..reconciled import ReconciledJob
from ..startup import wait_for_servers
from ..store.engine import check_connection, get_engine
from .claim import Aliases, Claimer
from .executor import Executor
from .fetcher import Fetcher
from .heartbeat import Heartbeat
from .maintenance import Maintenance
from .queues import QueueOrder, QueueSpec
from .runner import Runner
from .settlements import RedisTrouble, Settlements, Settler
from .slots import MAX_FETCH, SUSPECT_MARK, Slots, suspect_check
from .testsignals import WorkerSignals
from .watchdog import Watchdog

__all__ = ["EXECUTOR_EXIT_WAIT", "MAX_FETCH", "SUSPECT_MARK", "Worker"]

log = logging.getLogger("reconcile.worker")

EXECUTOR_EXIT_WAIT = 2.0
"""Seconds stop() waits, at its end, for its idle executor threads to end (and return
their held database connections)."""


class Worker:
    """One worker process. ``run()`` blocks (CLI); ``start()``/``stop()`` embed it (tests).

    ``signals``: named points tests wait on (:class:`WorkerSignals`); None (the
    default) turns them off.
    """

    def __init__(
        self,
        settings: Settings,
        queues: list[QueueSpec],
        *,
        strict: bool = False,
        broker: Broker | None = None,
        signals: WorkerSignals | None = None,
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
        self.signals = signals
        self.started_at = time.time()
        self.suspect_at = suspect_threshold(settings.max_recoveries)

        self.slots = Slots(self.capacity, self.refill, suspect_check(self.suspect_at), signals)
        self.settlements = Settlements()
        self.aliases = Aliases(self.settlements)
        self.settler = Settler(self.broker, self.proc_id, self.settlements, self.aliases.resolve)
        trouble = RedisTrouble()
        self.executor = Executor(settings, self.broker)
        self.maintenance = Maintenance(settings, self.broker, self.proc_id)
        # single queue: idle pickup by an executor thread's BLMOVE (see claim.py)
        self.claimer = (
            Claimer(self.broker, self.proc_id, self.order.names[0], self.order,
                    settings.idle_wait, self.slots, self.settlements, self.aliases,
                    trouble, signals)
            if len(self.order.names) == 1 else None
        )
        self.fetcher = Fetcher(self.broker, self.proc_id, self.order, settings.idle_wait,
                               self.slots, self.settlements, self.settler, self.aliases,
                               self.claimer, trouble, signals)
        self.runner = Runner(self.slots, self.executor, self.settlements, self.settler,
                             self.claimer)
        self.heartbeat = Heartbeat(self.broker, self.proc_id, settings.lease_seconds / 4,
                                   self.info, self.executor, self.slots, self.settlements,
                                   self.aliases, self.settler, trouble)
        self.watchdog = Watchdog(self.executor, self.slots, self.settler,
                                 lambda: self._spawn("reconcile-exec-r", self.runner.loop))

        # The thread table: appended by start() (main thread) and by the watchdog (a
        # replacement executor thread); read by stop(). Appends and iteration of a list
        # need no lock under the GIL, and stop() joins only what it sees.
        self._threads: list[threading.Thread] = []
        self._fetcher_thread: threading.Thread | None = None
        self._stopped = threading.Event()  # set once by stop(); a second stop() is a no-op

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        """Every thread this worker started, in start order: fetcher, heartbeat,
        maintenance, watchdog, then executor threads (``reconcile-exec-<i>``, and
        ``reconcile-exec-r`` for each replacement the watchdog started)."""
        return tuple(self._threads)

    @property
    def busy(self) -> int:
        """Jobs running now."""
        return self.slots.busy

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
            self.broker.heartbeat(self.proc_id, self.info())
        except redis.OutOfMemoryError as exc:
            # Redis is full (noeviction): start anyway, draining the queues is what frees
            # memory; the heartbeat registers this process as soon as a write is accepted.
            log.warning("cannot register in Redis yet (%s); starting, registration retried "
                        "by the heartbeat", exc)
        stopping = self.slots.stopping
        self._fetcher_thread = self._spawn("reconcile-fetcher", self.fetcher.run)
        self._spawn("reconcile-heartbeat", lambda: self.heartbeat.run(stopping))
        self._spawn("reconcile-maintenance", lambda: self.maintenance.run(stopping))
        self._spawn("reconcile-watchdog", lambda: self.watchdog.run(stopping))
        for i in range(self.concurrency):
            self._spawn(f"reconcile-exec-{i}", self.runner.loop)
        log_banner("worker", self.proc_id, self.settings,
                   queues={spec.name: spec.weight for spec in self.order.specs},
                   order="strict" if self.order.strict else "weighted", concurrency=self.concurrency)

    def _spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)
        return t

    def wait_for_servers(self, stop: threading.Event) -> bool:
        """Before :meth:`start` (``reconcile worker``): wait until Redis answers, and
        PostgreSQL too if a ReconciledJob of this worker's queues is registered. A server
        not there yet (refused, unknown host, timeout) is waited for, like Sidekiq and
        Celery do, with one log line saying what for; a permanent failure (credentials,
        TLS, ACL permission, missing database) is raised for the CLI to report. Returns
        False if ``stop`` was set while waiting."""
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
        from ..observe.surface import Surface  # deferred: prometheus_client only when run

        surface = Surface.for_worker(self)  # metrics_port: /metrics, /livez, /readyz
        self.start()
        surface.ready()  # systemd READY=1 and watchdog pings, when asked for
        while not stop_requested.wait(0.5):
            pass
        self.stop()
        surface.stop()

    def quiet(self) -> None:
        """Stop fetching new jobs; running and buffered jobs still complete."""
        self.slots.go_quiet()
        if self.signals is not None:
            self.signals.quiet.fire(None)

    def stop(self, timeout: float | None = None) -> int:
        """Graceful stop; returns how many jobs were pushed back to their queues (those
        Redis took: if it failed, the rest return when their lease expires, logged).

        Buffered jobs go back at once; running jobs get ``timeout`` (default
        ``shutdown_timeout``) seconds; then everything still leased goes back and the
        process unregisters. The last line logged says how many jobs went back; an
        ERROR line before it says when Redis did not take the push-backs (see
        ``docs/worker.md``, "The shutdown report").
        """
        if self._stopped.is_set():
            return 0  # already stopped: a second stop (signal, then finally) is a no-op
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        slots = self.slots
        self.quiet()
        fetcher = self._fetcher_thread
        if fetcher is not None:
            # Wait for what the fetcher leases to land: an in-flight fetch, and (one
            # queue) the adoption of a job claimed just before quiet, which the fetcher
            # does on its way out (quiet() woke it); until then that job's ack cannot be
            # resolved, and release.lua below would push the finished job back. An idle
            # fetcher blocked on wake-up lists (several queues) leases nothing before it
            # sees quiet: don't wait for it.
            deadline = time.monotonic() + self.settings.idle_wait + 2
            claims = self.claimer is not None
            while fetcher.is_alive() and (claims or not slots.idle) and time.monotonic() < deadline:
                fetcher.join(0.02)
        # An executor thread waiting in a claim (BLMOVE) could still take a job, which
        # release.lua, run below, would then miss: end its wait (it hands a job taken
        # meanwhile back itself, seeing quiet) and wait until it is out.
        slots.wait_claimer_gone(time.monotonic() + self.settings.idle_wait + 2, self._unblock)
        buffered = slots.drain()
        ops = self.settlements.take()
        ops += [SettleOp.push_back(d.field, d.queue, d.raw) for d in buffered]
        self.settler.settle(ops)
        unfinished = slots.wait_finished(time.monotonic() + timeout)
        slots.begin_stopping()
        self.settler.flush()
        # What Redis never took (it kept failing): those jobs are still in our lease
        # hash, as are the running ones if the release below fails too.
        unwritten = self.settlements.take()
        released = self.settler.release()
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
            for t in self.threads:
                if t.name.startswith("reconcile-exec") and t is not threading.current_thread():
                    t.join(max(0.0, exit_by - time.monotonic()))
        log.info("worker %s stopped (%d jobs pushed back)", self.proc_id, pushed)
        self._stopped.set()
        if self.signals is not None:
            self.signals.stopped.fire(pushed)
        return pushed

    def _unblock(self) -> None:
        with contextlib.suppress(redis.RedisError):  # the wait ends by itself within idle_wait
            self.broker.unblock(self.proc_id)

    # -- helpers ---------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What the heartbeat publishes about this process (``reconcile status``, web)."""
        return {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "beat": time.time(),
            "queues": ",".join(self.order.names),
            "concurrency": self.concurrency,
            "busy": self.slots.busy,
            "quiet": int(self.slots.quiet.is_set()),
        }

    def dump_threads(self) -> None:
        """Log the stack of every thread of the process (TTIN)."""
        frames = sys._current_frames()
        for t in threading.enumerate():
            frame = frames.get(t.ident or -1)
            stack = "".join(traceback.format_stack(frame)) if frame else "(no frame)"
            log.warning("thread %s:\n%s", t.name, stack)
