"""``reconcile scheduler``: fires reconcile passes and cron ticks, and heals Redis loss.

Any number of schedulers may run. Each loop iteration (about once a second):

1. **Redis-loss check**: the namespace's epoch sentinel (``{ns}:epoch``) must still
   exist and Redis's ``run_id`` must be unchanged. If either fails (FLUSHALL,
   failover, restart without persistence, eviction), log an incident and make every
   schedule due now (``trigger_now`` in PostgreSQL), so every class gets a pass at
   once instead of at its next tick.
2. **Claim** every due schedule in PostgreSQL. A claim advances ``next_run_at`` with
   a compare-and-set evaluated on the database clock, so each tick fires exactly once
   across all schedulers and local clock skew cannot double-fire or skip one; a
   claimed schedule is marked running, so a class never has two passes at once (of a
   partitioned class: one per partition, claimed one per round, to share them).
3. **Run** claimed passes on a small thread pool (a long pass does not delay other
   classes' ticks); a cron tick of a plain ``Job`` enqueues it. Then release the claim.

Besides the loop, :meth:`Scheduler.run` starts the ``reconcile-maintenance`` thread
that workers run too (``worker/maintenance.py``): promotion of the scheduled and retry
sets every ``poll_interval`` on average, batches of 1,000, and a try at the fleet-wide
reaper's turn. So jittered pass keys, retries and ``perform_in`` jobs reach their
queues with zero workers running (an autoscaler scaled to zero sees the queue grow),
and a dead worker's leases go back to their queue even if it was the last worker.

``run_once()`` does one iteration synchronously (tests, ``reconcile flush``); it does
not promote (``self.maintenance.promote_once()`` does).

The file is a little over 400 lines because :class:`Scheduler` is one state machine
(its loop, claims, Redis-loss handling and drift check share the claim state); the
parts that stand alone are split off: ``redis_watch.py`` (loss detection),
``schedule_rows.py`` (classes to rows, partition shares), ``passes.py``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

import redis

from .. import observe
from ..backoff import Backoff
from ..banner import log_banner
from ..broker import Broker, get_broker
from ..config import Settings, mask_url
from ..job import Job
from ..worker.maintenance import Maintenance
from . import schedule_rows as rows
from .healing import Healing
from .passes import PassResult, run_pass
from .redis_watch import RedisWatch
from .schedule_rows import CRON_PREFIX, schedule_of, scheduled_classes

log = logging.getLogger("reconcile.scheduler")

SCHEDULER_BEAT_SECONDS = 5.0
"""How often a running scheduler renews its record in Redis (``reconcile status``)."""

SCHEDULER_TTL = 15.0
"""Seconds a scheduler counts as alive after its last beat: three beats missed."""

DRIFT_CHECK_SECONDS = 60.0
"""How often a scheduler compares the shared schedule rows with its own definitions
(:meth:`Scheduler.check_drift`)."""


class Scheduler:
    """One scheduler process. ``run()`` blocks until TERM/INT; ``run_once()`` is one round."""

    def __init__(
        self,
        settings: Settings,
        classes: Iterable[type[Job]] | None = None,
        *,
        broker: Broker | None = None,
        max_parallel_passes: int = 4,
    ) -> None:
        from ..store.engine import get_engine

        self.settings = settings
        self.broker = broker or get_broker(settings)
        self.engine = get_engine(settings)
        self.classes = scheduled_classes(classes)
        self.schedules = {name: schedule_of(cls) for name, cls in self.classes.items()}
        # as the classes were when this scheduler started (the drift check compares them)
        self._specs = {name: rows.spec_of(cls) for name, cls in self.classes.items()}
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.watch = RedisWatch(self.broker)
        self.maintenance = Maintenance(settings, self.broker, self.owner)
        self.pool = ThreadPoolExecutor(max_parallel_passes, thread_name_prefix="reconcile-pass")
        self.results: list[PassResult] = []
        self.incidents: list[str] = []
        self._stop = threading.Event()
        self._running: dict[str, Future[None]] = {}
        self._after_loss: set[str] = set()  # made due by a loss, not yet fired as such
        self._ensured = False
        self._drift_checked = -1e18
        self._beat_at = -1e18
        self.round_ok_at: float | None = None  # monotonic time of the last round without error
        self.healing = Healing()  # times the Redis-loss incidents this scheduler handles
        self.looped_at = time.monotonic()  # of the last loop iteration (health checks)
        self._started_at = time.time()
        self._drift_warned: dict[str, str] = {}  # name -> the row spec warned about
        self._switches_synced = -1e18
        self._pruned = -1e18
        self._wake = threading.Event()  # a pass finished: claim again without waiting a tick

    # -- pieces --------------------------------------------------------------------

    def own_specs(self) -> dict[str, str]:
        """This scheduler's definition of each schedule (the row's ``spec`` text)."""
        return dict(self._specs)

    def ensure_schedules(self) -> None:
        """Write this scheduler's definitions into the shared rows, at start: the most
        recently started scheduler's definition is the one in force. A row that said
        something else is rewritten, with a WARNING naming both definitions."""
        from ..store import schedules as store

        own = self.own_specs()
        specs = [
            store.ScheduleSpec(
                name=name,
                kind="cron" if name.startswith(CRON_PREFIX) else "pass",
                spec=own[name],
                first_run_at=self._first_run(name),
            )
            for name in self.classes
        ]
        with self.engine.begin() as conn:
            before = {r.name: r for r in store.list_schedules(conn)}
            store.ensure(conn, specs)
            # rows of another partition count of this scheduler's classes go
            retired = [name for job, keep in rows.pass_rows(self.classes).items()
                       for name in store.retire_partitions(conn, job, keep)]
        if retired:
            log.warning("retired the schedule rows %s: their classes have another partition "
                        "count now", ", ".join(sorted(retired)))
        for name, spec in own.items():
            row = before.get(name)
            if row is not None and row.spec != spec:
                log.warning(
                    "schedule %s changed from %r (written %s) to %r, this scheduler's class "
                    "definition; schedulers still running the old one stop firing it",
                    name, row.spec, f"{row.updated_at:%Y-%m-%d %H:%M:%S}", spec)
        self._ensured = True
        self._drift_checked = -1e18

    def beat(self) -> None:
        """Tell Redis this scheduler is alive (``reconcile status``, ``/status.json``):
        host, pid, start, what it schedules and runs, and how long ago its last round
        (claims in PostgreSQL) went through. A Redis error is left to the round."""
        now = time.monotonic()
        self._beat_at = now
        self.broker.scheduler_beat(self.owner, {
            "host": socket.gethostname(), "pid": os.getpid(), "started_at": self._started_at,
            "schedules": len(self.classes), "passes_running": sorted(self._running),
            "round_ok_ago": None if self.round_ok_at is None else round(now - self.round_ok_at, 3),
        }, SCHEDULER_TTL)

    def check_drift(self) -> list[str]:
        """Schedules whose shared row says something other than this scheduler's class
        (a newer scheduler rewrote it): this one does not fire them (the claim requires
        its own spec) and logs a WARNING once per definition seen. Returns their names."""
        from ..store import schedules as store

        self._drift_checked = time.monotonic()
        own = self.own_specs()
        drifted = []
        for row in store.list_schedules(self.engine):
            mine = own.get(row.name)
            if mine is None or row.spec == mine:
                continue
            drifted.append(row.name)
            if self._drift_warned.get(row.name) != row.spec:
                self._drift_warned[row.name] = row.spec
                log.warning(
                    "schedule %s: the shared row says %r (written %s), this scheduler's class "
                    "says %r; it leaves %s to the schedulers that define it as the row does "
                    "(restart it with the same code, or restart the others to write yours)",
                    row.name, row.spec, f"{row.updated_at:%Y-%m-%d %H:%M:%S}", mine, row.name)
        return drifted

    def _first_run(self, name: str) -> Any:
        sched = self.schedules[name]
        if name.startswith(CRON_PREFIX):
            return sched.next_after
        return lambda now: now  # a new pass schedule runs at once

    def _next_after(self, name: str, previous: datetime, db_now: datetime) -> datetime:
        nxt: datetime = self.schedules[name].next_after(max(previous, db_now))
        return nxt

    def check_redis(self) -> str | None:
        """Detect Redis loss; on loss make every schedule due now. Returns the reason."""
        from ..store import schedules as store

        first = not self.watch.armed
        reason = self.watch.check()
        if reason:
            if not self.broker.claim_incident():
                # another scheduler is handling a loss seen a moment ago. Not re-armed:
                # if the loss is still there once the claim lapses (a second), this
                # scheduler handles it then (an extra pass is harmless; a forgotten
                # loss is not)
                return None
            try:
                # every pass schedule in the database, not only this process's classes, so
                # that schedulers running other apps heal too
                schedules = [s for s in store.list_schedules(self.engine) if s.kind == "pass"]
                names = [s.name for s in schedules]
                store.trigger_now(self.engine, names)
            except Exception:
                self.broker.release_incident()  # not handled: the next round sees it again
                raise
            self._after_loss.update(names)
            self.watch.rearm()
            # on the first check the only possible reason is the missing epoch (no
            # run_id or eviction count was recorded yet)
            if first and not any(
                    s.last_started_at for s in schedules):
                # a first start on an empty namespace: no pass ever ran, so Redis held
                # nothing of ours to lose. Not an incident (operators alert on INCIDENT)
                log.info("namespace %r is new (no epoch sentinel yet, no pass ever ran): "
                         "created it; made all %d reconcile passes due now",
                         self.settings.namespace, len(names))
                return reason
            self.incidents.append(reason)
            observe.record_incident(self.settings, reason)
            self.healing.begin(reason, schedules)
            log.error("INCIDENT: %s; made all %d reconcile passes due now", reason, len(names))
        return reason

    def flushed_by_operator(self) -> int:
        """``reconcile flush`` emptied the namespace on purpose: make every pass schedule
        due now (running schedulers take those this process cannot claim) and log it at
        INFO as what it is, not as an INCIDENT. Returns how many were made due."""
        from ..store import schedules as store

        names = [s.name for s in store.list_schedules(self.engine) if s.kind == "pass"]
        store.trigger_now(self.engine, names)
        self.watch.rearm()  # the flush kept the epoch; this records run_id and evictions
        log.info("namespace %r flushed by an operator (reconcile flush): made all %d "
                 "reconcile passes due now", self.settings.namespace, len(names))
        return len(names)

    def sync_switches(self) -> None:
        """Copy disabled classes from PostgreSQL to the Redis mirror that plain-job
        workers read (restores it after a flush)."""
        from ..store import switches

        disabled = {
            name: sw.reason or "" for name, sw in switches.all_switches(self.engine).items()
            if not sw.enabled
        }
        self.broker.mirror_switches(disabled)
        self._switches_synced = time.monotonic()

    def prune(self) -> int:
        """Delete ``reconcile_runs`` rows older than ``runs_keep_days`` (hourly)."""
        from ..store import runs

        self._pruned = time.monotonic()
        return runs.prune_runs(self.engine, timedelta(days=self.settings.runs_keep_days))

    def claim(self, share: bool = True) -> list[Any]:
        """Claim this scheduler's due schedules (not those running here). With ``share``
        (the loop), a partitioned class has at most one partition running here at a
        time, so the other schedulers claim the others (a pass is CPU-bound in Python:
        two partitions in one process share its GIL, while two processes use two
        cores); ``run_once`` claims every due one."""
        from ..store import schedules as store

        names = [n for n in self.classes if n not in self._running]
        if not names:
            return []
        groups, limits = rows.partition_shares(self.classes, self._running) if share else ({}, {})
        return list(store.claim_due(
            self.engine, self.owner, names, self._next_after,
            timedelta(seconds=self.settings.pass_stale_seconds),
            specs=self.own_specs(),  # never fire by a definition that is not in force
            groups=groups or None, group_limits=limits,
        ))

    def fire(self, name: str, trigger: str = "tick") -> None:
        """Run the pass (or cron enqueue) of ``name`` here and now, then release its claim."""
        from ..store import schedules as store

        cls = self.classes[name]
        try:
            if name.startswith(CRON_PREFIX):
                try:
                    cls.perform_async(*getattr(cls, "cron_args", ()))
                except Exception:
                    # the tick is claimed but its job was not enqueued: make it due again
                    store.trigger_now(self.engine, [name])
                    raise
                log.info("cron tick: enqueued %s", cls.job_name)
            else:
                part = rows.partition_of(name, getattr(cls, "partitions", 1))
                result = run_pass(
                    cls, trigger=trigger, owner=self.owner, settings=self.settings,  # type: ignore[arg-type]
                    keepalive=lambda: store.keep_running(self.engine, name, self.owner),
                    partition=None if part.count == 1 else (part.index, part.count),
                )
                self.results.append(result)
                observe.record_pass(self.settings, result)
        except Exception:
            log.exception("firing %s failed", name)
        finally:
            store.finish(self.engine, name, self.owner)

    # -- loops ---------------------------------------------------------------------

    def run_once(self, trigger: str = "tick") -> list[str]:
        """One round, synchronously: Redis check, claim, run. Returns names fired."""
        if not self._ensured:
            self.ensure_schedules()
        lost = self.check_redis()
        self.sync_switches()
        fired = []
        for c in self.claim(share=False):
            self.fire(c.name, "redis_loss" if lost and trigger == "tick" else trigger)
            fired.append(c.name)
        return fired

    def run(self, tick: float = 1.0) -> None:
        """Loop until TERM/INT (or :meth:`stop`); passes run on the thread pool."""
        def on_term(signum: int, frame: FrameType | None) -> None:
            log.info("received %s: scheduler stopping", signal.Signals(signum).name)
            self.stop()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_term)
            signal.signal(signal.SIGINT, on_term)
        if not self.wait_for_servers():
            self.pool.shutdown(wait=True)
            return
        policy = self.broker.eviction_policy()
        if policy is not None and policy != "noeviction":
            log.warning("Redis maxmemory-policy is %r, not 'noeviction': evicted work is "
                        "re-derived by passes, but plain jobs are lost. Set noeviction.", policy)
        log_banner("scheduler", self.owner, self.settings,
                   schedules=sorted(self.classes))
        from ..observe.surface import Surface

        surface = Surface.for_scheduler(self)  # metrics_port: /metrics, /livez, /readyz
        # its own thread, as in a worker: a round that waits on PostgreSQL (down, or a
        # slow claim) must not hold up promotion, which needs Redis only
        maintenance = threading.Thread(target=self.maintenance.run, args=(self._stop,),
                                       name="reconcile-maintenance", daemon=True)
        maintenance.start()
        surface.ready()  # systemd READY=1 and watchdog pings, when asked for
        backoff = Backoff(first=1.0, cap=10.0)
        while not self._stop.is_set():
            self.looped_at = time.monotonic()
            pause = tick
            for name, fut in list(self._running.items()):
                if fut.done():
                    del self._running[name]
            try:
                if time.monotonic() - self._beat_at >= SCHEDULER_BEAT_SECONDS:
                    self.beat()
                if not self._ensured:
                    self.ensure_schedules()
                lost = self.check_redis()
                if lost or time.monotonic() - self._switches_synced > self.settings.switch_cache_seconds:
                    self.sync_switches()
                if time.monotonic() - self._pruned > 3600:
                    self.prune()
                if time.monotonic() - self._drift_checked > DRIFT_CHECK_SECONDS:
                    self.check_drift()
                for c in self.claim():
                    # a pass that was running when the loss was seen fires as a loss
                    # pass later, when its claim comes round (it must not trust locks)
                    trigger = "redis_loss" if lost or c.name in self._after_loss else "tick"
                    self._after_loss.discard(c.name)
                    fut = self.pool.submit(self.fire, c.name, trigger)
                    fut.add_done_callback(lambda _: self._wake.set())
                    self._running[c.name] = fut
                backoff.reset()
                self.healing.check(self.engine, self.settings)
                self.round_ok_at = time.monotonic()
            except (redis.RedisError, OSError) as exc:
                log.warning("scheduler round failed (%s); retrying", exc)
                pause = backoff.next()
            except Exception as exc:  # database errors: keep the scheduler alive
                log.warning("scheduler round failed (%s: %s); retrying", type(exc).__name__, exc)
                pause = backoff.next()
            self._wake.wait(pause)  # a tick, or less when a pass finishes
            self._wake.clear()
        surface.stop()
        self.pool.shutdown(wait=True)
        maintenance.join(timeout=5.0)
        try:
            self.broker.scheduler_gone(self.owner)
        except redis.RedisError as exc:
            log.warning("could not remove this scheduler's record from Redis (%s); it "
                        "shows as dead for a day", exc)
        log.info("scheduler %s stopped", self.owner)

    def wait_for_servers(self) -> bool:
        """At the start of :meth:`run`: wait until Redis and PostgreSQL answer, logging
        one line saying what for while one is not there yet; raise a permanent failure
        (credentials, TLS, ACL permission, missing database) at once. False if stopped
        while waiting. After the start every round retries with backoff instead."""
        from ..startup import wait_for_servers
        from ..store.engine import check_connection

        return wait_for_servers(self.settings, [
            (f"Redis at {mask_url(self.settings.redis_url)}", self.broker.ping),
            (f"PostgreSQL at {mask_url(self.settings.database_url)}",
             lambda: check_connection(self.engine)),
        ], self._stop, f"scheduler {self.owner}")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
