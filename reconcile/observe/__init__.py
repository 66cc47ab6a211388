"""What an operator sees of a running process: Prometheus metrics, health checks, systemd.

The flow, one module per step::

    executor / scheduler --record--> metrics.py (process-local counters, histograms)
    Redis + PostgreSQL  --scrape--> cluster.py (cluster-wide gauges, cached)
    worker / scheduler  --check---> health.py  (liveness, readiness)
                 server.py: /metrics, /livez, /readyz on ``metrics_port``
                 sdnotify.py: READY=1, WATCHDOG=1 to systemd while live
                 surface.py: starts and stops the above for a worker or a scheduler

docs/metrics.md lists every metric, its labels and the process that serves it.

This package's ``__init__`` imports nothing heavy: ``import reconcile`` (every web
process that enqueues) does not load ``prometheus_client``; a worker loads it only
when it records metrics (:func:`enabled`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..config import Settings

if TYPE_CHECKING:
    from ..scheduler.passes import PassResult

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess() -> bool:
    """Whether this process runs in ``prometheus_client``'s multiprocess mode (the
    environment variable ``PROMETHEUS_MULTIPROC_DIR`` names a directory)."""
    return bool(os.environ.get(MULTIPROC_ENV))


def enabled(settings: Settings) -> bool:
    """Whether this process records metrics: a metrics port, or multiprocess mode
    (another process of the host may serve what this one records)."""
    return bool(settings.metrics_port) or multiprocess()


def record_pass(settings: Settings, result: PassResult) -> None:
    """A finished pass of this scheduler, counted when metrics are on (:func:`enabled`)."""
    if enabled(settings):
        from . import metrics  # deferred: prometheus_client

        metrics.record_pass(result)


def record_incident(settings: Settings, reason: str) -> None:
    """A Redis loss this scheduler handled, counted when metrics are on."""
    if enabled(settings):
        from . import metrics  # deferred: prometheus_client

        metrics.record_incident(reason)


def record_heal(settings: Settings, reason: str, seconds: float) -> None:
    """The seconds a Redis loss this scheduler handled took to heal."""
    if enabled(settings):
        from . import metrics  # deferred: prometheus_client

        metrics.record_heal(reason, seconds)
