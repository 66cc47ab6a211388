"""Start and stop what a worker or a scheduler shows an operator.

``reconcile worker`` and ``reconcile scheduler`` call, around their own start::

    surface = Surface.for_worker(worker)   # binds metrics_port (fails fast if taken)
    worker.start()
    surface.ready()                        # systemd READY=1, watchdog pings begin
    ...
    surface.stop()                         # STOPPING=1, server closed, live gauges gone

What each serves (docs/metrics.md): a worker its own job counters and process gauges;
a scheduler its pass and incident counters and the cluster-wide gauges
(:class:`~.cluster.ClusterCollector`). Both serve ``/livez`` and ``/readyz``. With
metrics off (``metrics_port`` 0, no ``PROMETHEUS_MULTIPROC_DIR``) nothing here loads
``prometheus_client``: only the systemd notifier runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config import Settings
from ..errors import ConfigError
from . import MULTIPROC_ENV, enabled, multiprocess
from .health import Health, scheduler_health, worker_health
from .sdnotify import Notifier

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from ..scheduler.service import Scheduler
    from ..worker import Worker
    from .server import MetricsServer


class Surface:
    """The metrics server (None with ``metrics_port`` 0) and the systemd notifier of
    one process."""

    def __init__(self, server: MetricsServer | None, health: Callable[[str], Health],
                 flush: Callable[[], None] | None = None) -> None:
        self.server = server
        self.health = health
        self.notifier = Notifier(lambda: health("live").ok)
        self._last_flush = flush  # at stop: this process's last counts

    @classmethod
    def for_worker(cls, worker: Worker) -> Surface:
        def health(probe: str) -> Health:
            return worker_health(worker, probe)

        if not enabled(worker.settings):
            return cls(None, health)
        from . import metrics  # deferred: prometheus_client, only when metrics are on

        def gauges() -> None:
            slots = worker.slots
            metrics.set_process_gauges(worker.proc_id, slots.outstanding, slots.busy, worker.concurrency)
            if worker.executor.metrics is not None:
                worker.executor.metrics.flush()  # the buffered job counts (JobMetrics)

        gauges()
        worker.heartbeat.on_beat = gauges  # the other processes of a host: per beat
        server = cls._serve(worker.settings, lambda: (metrics.WORKER_METRICS, ()), health, gauges)
        return cls(server, health, gauges)

    @classmethod
    def for_scheduler(cls, scheduler: Scheduler) -> Surface:
        def health(probe: str) -> Health:
            return scheduler_health(scheduler, probe)

        def collectors() -> tuple[tuple[Collector, ...], tuple[Collector, ...]]:
            from ..reconciled import ReconciledJob
            from . import metrics
            from .cluster import ClusterCollector

            def classes() -> list[type[ReconciledJob]]:
                return [c for c in scheduler.classes.values() if issubclass(c, ReconciledJob)]

            cluster = ClusterCollector(scheduler.settings, classes, broker=scheduler.broker)
            return metrics.SCHEDULER_METRICS, (cluster,)

        return cls(cls._serve(scheduler.settings, collectors, health, None), health)

    @staticmethod
    def _serve(
        settings: Settings,
        collectors: Callable[[], tuple[tuple[Collector, ...], tuple[Collector, ...]]],
        health: Callable[[str], Health], before_scrape: Callable[[], None] | None,
    ) -> MetricsServer | None:
        """The started server on ``metrics_port`` (None when it is 0); a port that
        cannot be bound raises :class:`ConfigError` naming the setting."""
        if not settings.metrics_port:
            return None
        from . import metrics  # deferred: prometheus_client
        from .server import MetricsServer

        own, extra = collectors()
        server = MetricsServer(settings.metrics_host, settings.metrics_port,
                               metrics.registry_for(own, extra), health,
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
        return server

    def ready(self) -> None:
        """The process serves: tell systemd (when it asked, see :mod:`.sdnotify`)."""
        self.notifier.start()

    def stop(self) -> None:
        if self._last_flush is not None:
            self._last_flush()  # multiprocess mode: the files keep this process's counts
        self.notifier.stop()
        if self.server is not None:
            self.server.stop()
        if multiprocess():
            from . import metrics

            metrics.process_gone()
