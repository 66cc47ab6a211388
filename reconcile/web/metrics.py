"""``/metrics`` of the dashboard: the cluster-wide gauges, by ``prometheus_client``.

The dashboard serves what a scheduler serves of the cluster
(:class:`reconcile.observe.cluster.ClusterCollector`: queues, sets, processes,
schedulers alive, the namespace's outcome counters from Redis at each scrape;
quarantine, last pass and reconcile lag from PostgreSQL, cached a few seconds), so a
Prometheus that cannot reach the schedulers can scrape it instead. It serves none of
the process-local counters (jobs by class, passes): those come from the workers' and
schedulers' own ``metrics_port`` (docs/metrics.md says which process serves what).
Lag samples need the job classes: run the dashboard with ``--app``. PostgreSQL is read
only when ReconciledJobs are registered or ``database_url`` is set.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from ..observe.cluster import ClusterCollector, redis_families

if TYPE_CHECKING:
    from ..broker import Broker
    from ..config import Settings
    from ..reconciled import ReconciledJob

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""Prometheus text format 0.0.4, which every Prometheus version reads."""


def _registered() -> list[type[ReconciledJob]]:
    from .. import registry
    from ..reconciled import ReconciledJob

    return [c for c in registry.all_classes().values() if issubclass(c, ReconciledJob)]


class DashboardMetrics:
    """The registry the dashboard's ``/metrics`` serves, for one settings object."""

    def __init__(self, settings: Settings, broker: Broker) -> None:
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=True)
        # PostgreSQL only when this deployment uses it (ReconciledJobs registered, or a
        # database_url set): a Redis-only dashboard does not warn every 5 minutes
        postgres = bool(_registered()) or settings.source_of("database_url") != "default"
        self.registry.register(ClusterCollector(settings, _registered, broker=broker, postgres=postgres))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Doc(Collector):
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def collect(self) -> Iterator[Metric]:
        yield from redis_families(self.doc)


def render(doc: dict[str, Any]) -> bytes:
    """The exposition text of the Redis families of one status document
    (:func:`reconcile.api.status`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Doc(doc))
    return generate_latest(registry)
