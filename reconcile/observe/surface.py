"""Start and stop what a worker or a scheduler shows an operator.

``reconcile worker`` and ``reconcile scheduler`` call, around their own start::

    surface = Surface.for_worker(worker)   # binds metrics_port (fails fast if taken)
    worker.start()
    surface.ready()                        # systemd READY=1, watchdog pings begin
    ...
    surface.stop()                         # STOPPING=1, server closed, live gauges gone

What each serves (docs/metrics.md): a worker its own job counters and process gauges;
a scheduler its pass and incident counters and the cluster-wide gauges
(:class:`~.cluster.ClusterCollector`). Both serve ``/livez`` and ``/readyz``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config import Settings
from ..errors import ConfigError
from . import MULTIPROC_ENV, enabled, metrics, multiprocess
from .cluster import ClusterCollector
from .health import Health, scheduler_health, worker_health
from .sdnotify import Notifier
from .server import MetricsServer

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..scheduler.service import Scheduler
    from ..worker import Worker


class Surface:
    """The metrics server (None with ``metrics_port`` 0) and the systemd notifier of
    one process."""

    def __init__(self, server: MetricsServer | None, health: Callable[[str], Health]) -> None:
        self.server = server
        self.health = health
        self.notifier = Notifier(lambda: health("live").ok)
        self._last_flush: Callable[[], None] | None = None  # at stop: the last counts

    @classmethod
    def for_worker(cls, worker: Worker) -> Surface:
        def gauges() -> None:
            slots = worker.slots
            metrics.set_process_gauges(worker.proc_id, slots.outstanding, slots.busy, worker.concurrency)
            if worker.executor.metrics is not None:
                worker.executor.metrics.flush()  # the buffered job counts (JobMetrics)

        if enabled(worker.settings):
            gauges()
            worker.heartbeat.on_beat = gauges  # the other processes of a host: per beat

        def health(probe: str) -> Health:
            return worker_health(worker, probe)

        surface = cls._start(worker.settings, metrics.registry_for(metrics.WORKER_METRICS),
                             health, gauges)
        surface._last_flush = gauges if enabled(worker.settings) else None
        return surface

    @classmethod
    def for_scheduler(cls, scheduler: Scheduler) -> Surface:
        from ..reconciled import ReconciledJob

        def classes() -> list[type[ReconciledJob]]:
            return [c for c in scheduler.classes.values() if issubclass(c, ReconciledJob)]

        collector = ClusterCollector(scheduler.settings, classes, broker=scheduler.broker)

        def health(probe: str) -> Health:
            return scheduler_health(scheduler, probe)

        registry = metrics.registry_for(metrics.SCHEDULER_METRICS, [collector])
        return cls._start(scheduler.settings, registry, health, None)

    @classmethod
    def _start(
        cls, settings: Settings, registry: CollectorRegistry, health: Callable[[str], Health],
        before_scrape: Callable[[], None] | None,
    ) -> Surface:
        server = None
        if settings.metrics_port:
            server = MetricsServer(settings.metrics_host, settings.metrics_port, registry, health,
                                   before_scrape=before_scrape, takeover=multiprocess())
            try:
                server.start()
            except OSError as exc:
                raise ConfigError(
                    f"setting 'metrics_port' (from {settings.source_of('metrics_port')}): cannot "
                    f"serve metrics on {settings.metrics_host}:{settings.metrics_port} "
                    f"({exc.strerror or exc}); choose a free port, or set "
                    f"{MULTIPROC_ENV} for processes of one host sharing it "
                    "(docs/metrics.md)") from None
        return cls(server, health)

    def ready(self) -> None:
        """The process serves: tell systemd (when it asked, see :mod:`.sdnotify`)."""
        self.notifier.start()

    def stop(self) -> None:
        if self._last_flush is not None:
            self._last_flush()  # multiprocess mode: the files keep this process's counts
        self.notifier.stop()
        if self.server is not None:
            self.server.stop()
        metrics.process_gone()
