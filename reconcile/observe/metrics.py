"""Process-local metrics: what this process did (jobs settled, passes run, incidents).

Counters and histograms live in this process (``prometheus_client`` objects made once,
at import, in no registry: :func:`registry_for` puts them in the registry a server
serves). They are recorded where outcomes are decided, with no Redis or PostgreSQL
round trip and no lock on the job's path:

* :class:`JobMetrics` (the worker's executor): ``reconcile_jobs_total{class,queue,
  outcome}`` and ``reconcile_job_duration_seconds{class}``. A job costs one tuple
  appended to a deque; the buffer is added up and applied in batches (before a
  scrape, at each heartbeat, every :data:`FLUSH_AT` jobs);
* :func:`record_pass` (the scheduler, from each :class:`~reconcile.scheduler.passes.PassResult`):
  ``reconcile_pass_keys_total{class,kind}``, ``reconcile_pass_duration_seconds{class}``,
  ``reconcile_passes_total{class,result}``;
* :func:`record_incident` (the scheduler that handled a Redis loss):
  ``reconcile_incidents_total{kind}``;
* :func:`set_process_gauges` (a worker, at each heartbeat and scrape):
  ``reconcile_in_flight{process}``, ``reconcile_process_busy_threads{process}``,
  ``reconcile_process_threads{process}``.

Several processes on one host (multiprocess mode): when the environment variable
``PROMETHEUS_MULTIPROC_DIR`` names a directory when the process starts,
``prometheus_client`` keeps these values in memory-mapped files there and any one
process's server adds up every process's files (:func:`registry_for`). The gauges are
``livesum``: a process that stops removes its files (:func:`process_gone`).

:func:`enabled` says whether a process records at all: with ``metrics_port`` 0 and no
``PROMETHEUS_MULTIPROC_DIR`` nothing is recorded, so metrics off cost nothing.
"""

from __future__ import annotations

import collections
import os
import threading
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.registry import Collector

from . import multiprocess
from ._prometheus_private import observe_many

if TYPE_CHECKING:
    from ..scheduler.passes import PassResult

JOB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
               30.0, 60.0, 300.0, float("inf"))
"""Seconds; background jobs run from a millisecond (a no-op ReconciledJob is ~1 ms of
PostgreSQL) to minutes."""

PASS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                600.0, 1800.0, float("inf"))
"""Seconds; a pass over a million pending keys takes tens of seconds."""

JOBS = Counter(
    "reconcile_jobs_total",
    "Deliveries settled by this worker process, by job class, queue and outcome (done, "
    "already_done, lock_busy, db_unavailable, disabled, held, retry, dead, discarded).",
    ["class", "queue", "outcome"], registry=None)
JOB_DURATION = Histogram(
    "reconcile_job_duration_seconds",
    "Seconds a delivery ran in this worker process (perform and, for a ReconciledJob, its "
    "transaction), whatever its outcome.",
    ["class"], buckets=JOB_BUCKETS, registry=None)
IN_FLIGHT = Gauge(
    "reconcile_in_flight", "Jobs leased by this worker process (running and buffered).",
    ["process"], registry=None, multiprocess_mode="livesum")
BUSY = Gauge(
    "reconcile_process_busy_threads", "Executor threads of this worker process running a job.",
    ["process"], registry=None, multiprocess_mode="livesum")
THREADS = Gauge(
    "reconcile_process_threads", "Executor threads of this worker process (concurrency).",
    ["process"], registry=None, multiprocess_mode="livesum")
PASS_KEYS = Counter(
    "reconcile_pass_keys_total",
    "Keys seen by this scheduler's reconcile passes, by job class and kind (found, "
    "enqueued, already_queued, quarantined, deferred).",
    ["class", "kind"], registry=None)
PASS_DURATION = Histogram(
    "reconcile_pass_duration_seconds", "Seconds a reconcile pass of this scheduler took.",
    ["class"], buckets=PASS_BUCKETS, registry=None)
PASSES = Counter(
    "reconcile_passes_total",
    "Reconcile passes run by this scheduler, by job class and result (ok, error, disabled).",
    ["class", "result"], registry=None)
INCIDENTS = Counter(
    "reconcile_incidents_total",
    "Redis-loss incidents handled by this scheduler, by kind (restart: Redis's run_id "
    "changed; epoch_lost: the epoch sentinel vanished, by FLUSHALL, eviction or a restart "
    "without persistence; eviction: Redis evicted keys).",
    ["kind"], registry=None)

HEAL = Histogram(
    "reconcile_incident_heal_seconds",
    "Seconds from a Redis-loss incident this scheduler handled to every pass it made due "
    "having finished once since, by kind.",
    ["kind"], buckets=(1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, float("inf")),
    registry=None)

WORKER_METRICS: tuple[Collector, ...] = (JOBS, JOB_DURATION, IN_FLIGHT, BUSY, THREADS)
SCHEDULER_METRICS: tuple[Collector, ...] = (PASS_KEYS, PASS_DURATION, PASSES, INCIDENTS, HEAL)
PASS_KINDS = ("found", "enqueued", "already_queued", "quarantined", "deferred")


def registry_for(own: Iterable[Collector], extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """The registry a server of this process serves: its own metrics ``own`` (in
    multiprocess mode instead every process's files of the directory, this one's
    included), the standard process and platform collectors (single-process mode only:
    their values are per process), and ``extra`` (cluster-wide collectors)."""
    from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

    registry = CollectorRegistry(auto_describe=True)
    if multiprocess():
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        for c in (*own, PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(c)
    for c in extra:
        registry.register(c)
    return registry


FLUSH_AT = 4096
"""Deliveries a worker buffers before the thread recording the next one adds them up
(bounds the buffer: about 400 KB)."""


class JobMetrics:
    """The worker's job counters, one per executor (shared by its threads).

    :meth:`record` is the hot path: it appends one tuple to a deque (atomic under the
    GIL: no lock, no ``prometheus_client`` call). :meth:`flush` adds the buffer up and
    applies it, one counter increment per (class, queue, outcome) and one histogram
    increment per bucket touched: called before each scrape of the process's server,
    at each heartbeat (so the other processes of a multiprocess host are at most one
    heartbeat behind), at a clean stop, and by a recording thread every
    :data:`FLUSH_AT` deliveries."""

    def __init__(self) -> None:
        self._events: deque[tuple[tuple[str, str, str], float | None]] = deque()
        self._flushing = threading.Lock()  # one flush at a time; never taken by record()
        self._counters: dict[tuple[str, str, str], Counter] = {}  # labelled children, by flushes
        self._histograms: dict[str, Histogram] = {}

    def record(self, cls: str, queue: str, outcome: str, seconds: float | None) -> None:
        """One settled delivery; ``seconds`` it ran (None: perform never started)."""
        events = self._events
        events.append(((cls, queue, outcome), seconds))
        if len(events) >= FLUSH_AT:
            self.flush(wait=False)

    def flush(self, wait: bool = True) -> int:
        """Apply the buffered deliveries; how many. ``wait`` False: return 0 at once if
        another thread is flushing (it will take these too, or the next flush will)."""
        if not self._flushing.acquire(blocking=wait):
            return 0
        try:
            events = self._events
            pop = events.popleft
            # others keep appending on the right: take exactly the n there now
            batch = [pop() for _ in range(len(events))]
            counts = collections.Counter(key for key, _ in batch)
            durations: dict[str, list[float]] = {}
            for key, seconds in batch:
                if seconds is not None:
                    durations.setdefault(key[0], []).append(seconds)
            for key, k in counts.items():
                child = self._counters.get(key)
                if child is None:
                    child = self._counters[key] = JOBS.labels(*key)
                child.inc(k)
            for cls, values in durations.items():
                hist = self._histograms.get(cls)
                if hist is None:
                    hist = self._histograms[cls] = JOB_DURATION.labels(cls)
                observe_many(hist, values)
            return len(batch)
        finally:
            self._flushing.release()


def set_process_gauges(process: str, in_flight: int, busy: int, threads: int) -> None:
    """The worker process's gauges (heartbeat, and before a scrape of its own server)."""
    IN_FLIGHT.labels(process).set(in_flight)
    BUSY.labels(process).set(busy)
    THREADS.labels(process).set(threads)


def record_pass(result: PassResult) -> None:
    """One finished reconcile pass of this scheduler."""
    name = result.job
    for kind in PASS_KINDS:
        n = getattr(result, kind)
        if n:
            PASS_KEYS.labels(name, kind).inc(n)
    PASS_DURATION.labels(name).observe(result.seconds)
    PASSES.labels(name, "error" if result.error else "disabled" if result.disabled else "ok").inc()


def incident_kind(reason: str) -> str:
    """The ``kind`` label of a Redis-loss reason (:class:`~reconcile.scheduler.redis_watch.RedisWatch`)."""
    if reason.startswith("epoch sentinel"):
        return "epoch_lost"
    if "restarted" in reason:
        return "restart"
    if "evicted" in reason:
        return "eviction"
    return "other"


def record_incident(reason: str) -> None:
    """A Redis loss handled by this scheduler (logged as INCIDENT)."""
    INCIDENTS.labels(incident_kind(reason)).inc()


def record_heal(reason: str, seconds: float) -> None:
    """A Redis loss this scheduler handled healed (:mod:`reconcile.scheduler.healing`)."""
    HEAL.labels(incident_kind(reason)).observe(seconds)


def process_gone() -> None:
    """At a clean stop in multiprocess mode: remove this process's live gauges from the
    directory (its counters stay: a counter's total must not go down)."""
    if multiprocess():
        from prometheus_client import multiprocess as mp

        mp.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
