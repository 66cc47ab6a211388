"""Cluster-wide gauges, read at scrape time from Redis and PostgreSQL.

:class:`ClusterCollector` is served by every scheduler and by the dashboard (never by
workers, which are many). Redis is read at each scrape (:func:`reconcile.api.status`,
a handful of round trips, what ``reconcile status`` costs); PostgreSQL (the bounded
queries of :mod:`reconcile.store.gauges`) at most once per ``cache_seconds``, so any
number of scrapers cost one read per period there. Every target serving it reports the
same values: aggregate them with ``max``, never ``sum`` (docs/metrics.md).

A source that cannot be read drops its families from the scrape and sets
``reconcile_metrics_source_up{source}`` to 0 (one WARNING per source per
:data:`WARN_EVERY` seconds); a lag query that fails drops that class's sample only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..config import Settings

if TYPE_CHECKING:
    from ..broker import Broker
    from ..reconciled import ReconciledJob

log = logging.getLogger("reconcile.metrics")

CACHE_SECONDS = 5.0
"""Default seconds one read of Redis and PostgreSQL serves scrapes for."""

WARN_EVERY = 300.0
"""Seconds between two warnings about one source that cannot be read."""


class ClusterCollector(Collector):
    """The cluster-wide families; ``classes()`` gives the ReconciledJob classes whose
    ``pending_since`` gives a lag sample (the scheduler's, or the registry's).
    ``postgres`` False reads Redis only."""

    def __init__(
        self, settings: Settings, classes: Callable[[], Iterable[type[ReconciledJob]]],
        *, broker: Broker | None = None, postgres: bool = True,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self.settings = settings
        self.classes = classes
        self.broker = broker
        self.postgres = postgres
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()  # one PostgreSQL read at a time; scrapes wait for it
        self._cached: list[Metric] = []
        self._cached_up = 0
        self._read_at = -1e18
        self._warned: dict[str, float] = {}

    def describe(self) -> list[Metric]:
        return []  # no fixed set: families depend on what the sources hold

    def collect(self) -> Iterator[Metric]:
        yield from self._read()

    def _warn(self, source: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned.get(source, -1e18) >= WARN_EVERY:
            self._warned[source] = now
            log.warning("metrics: cannot read %s (%s: %s); its gauges are left out of "
                        "/metrics until it answers", source, type(exc).__name__, exc)

    def _read(self) -> list[Metric]:
        up = GaugeMetricFamily("reconcile_metrics_source_up",
                               "1 if the last read of this source for /metrics worked.",
                               labels=["source"])
        out: list[Metric] = []
        try:
            from ..api import status

            out += redis_families(status(self.settings, self.broker))
            up.add_metric(["redis"], 1)
        except Exception as exc:
            self._warn("Redis", exc)
            up.add_metric(["redis"], 0)
        if self.postgres:
            with self._lock:
                if time.monotonic() - self._read_at >= self.cache_seconds:
                    try:
                        self._cached, self._cached_up = self._postgres_families(), 1
                    except Exception as exc:
                        self._warn("PostgreSQL", exc)
                        self._cached, self._cached_up = [], 0
                    self._read_at = time.monotonic()
                out += self._cached
                up.add_metric(["postgresql"], self._cached_up)
        out.append(up)
        return out

    def _postgres_families(self) -> list[Metric]:
        from ..store import gauges
        from ..store.engine import get_engine, get_pending_engine

        engine = get_engine(self.settings)
        quarantined = GaugeMetricFamily("reconcile_quarantined", "Keys in reconcile_quarantine.",
                                        labels=["class"])
        for name, n in sorted(gauges.quarantine_counts(engine).items()):
            quarantined.add_metric([name], n)
        last = GaugeMetricFamily(
            "reconcile_last_pass_timestamp_seconds",
            "When the last reconcile pass of the class finished without an error (epoch s).",
            labels=["class"])
        for name, t in sorted(gauges.last_pass_times(engine).items()):
            last.add_metric([name], t)
        lag = GaugeMetricFamily(
            "reconcile_lag_seconds",
            "Age of the oldest still-pending key of the class, by its pending_since column "
            "(0: nothing pending); how far PostgreSQL's truth is ahead of the work.",
            labels=["class"])
        interval = GaugeMetricFamily(
            "reconcile_pass_interval_seconds",
            "Seconds between two passes of the class (its `every`; classes on a cron have none): "
            "alert when the last pass is several intervals old.", labels=["class"])
        scan = None
        for cls in sorted(self.classes(), key=lambda c: c.job_name):
            if isinstance(cls.every, (int, float)) and cls.every:
                interval.add_metric([cls.job_name], float(cls.every))
            column = getattr(cls, "pending_since", None)
            if not column:
                continue
            scan = scan or get_pending_engine(self.settings)
            try:
                age = gauges.oldest_pending_age(scan, cls().pending(), column)
            except Exception as exc:
                self._warn(f"the lag of {cls.job_name}", exc)
                continue
            lag.add_metric([cls.job_name], 0.0 if age is None else age)
        return [quarantined, last, interval, lag]


def redis_families(doc: dict[str, Any]) -> list[Metric]:
    """The families of a status document (:func:`reconcile.api.status`)."""

    def gauge(name: str, help_text: str, labels: list[str],
              samples: Iterable[tuple[list[str], float]]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, help_text, labels=labels)
        for values, v in samples:
            family.add_metric(values, v)
        return family

    procs = doc["processes"]
    states = {"alive": 0, "quiet": 0, "dead": 0}
    for p in procs:
        states["quiet" if p["quiet"] else ("alive" if p["alive"] else "dead")] += 1
    live = [p for p in procs if p["alive"]]
    namespace = CounterMetricFamily(
        "reconcile_namespace_jobs", "Job outcomes counted in Redis since the namespace was "
        "created (all processes; reset by a flush).", labels=["outcome"])
    for k, n in doc["counters"].items():
        namespace.add_metric([k], n)
    return [
        gauge("reconcile_queue_size", "Jobs waiting in the queue.", ["queue"],
              (([q["name"]], q["size"]) for q in doc["queues"])),
        gauge("reconcile_queue_latency_seconds", "Age of the oldest job waiting in the queue.",
              ["queue"], (([q["name"]], q["latency"]) for q in doc["queues"])),
        gauge("reconcile_set_jobs", "Jobs in the scheduled, retry and dead sets.", ["set"],
              (([s], doc[s]) for s in ("scheduled", "retry", "dead"))),
        gauge("reconcile_set_due_jobs",
              "Jobs of the scheduled and retry sets that are due now (about to be promoted).",
              ["set"], (([s], doc[f"{s}_due"]) for s in ("scheduled", "retry"))),
        gauge("reconcile_in_flight_jobs", "Jobs leased by worker processes, all of them.", [],
              [([], doc["in_flight"])]),
        gauge("reconcile_processes", "Registered worker processes by state.", ["state"],
              (([s], n) for s, n in states.items())),
        gauge("reconcile_busy_threads", "Executor threads running a job, all live processes.",
              [], [([], sum(p["busy"] for p in live))]),
        gauge("reconcile_threads", "Executor threads of live worker processes.", [],
              [([], sum(p["concurrency"] for p in live))]),
        gauge("reconcile_schedulers_alive",
              "Schedulers beating now; 0 means no reconcile pass, cron job or Redis-loss "
              "healing runs.", [], [([], doc["schedulers_alive"])]),
        namespace,
    ]
