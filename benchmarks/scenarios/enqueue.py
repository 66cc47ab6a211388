"""Enqueue throughput: a loop of single enqueues, and the bulk API where there is one."""

from __future__ import annotations

from ..systems import System
from .base import Context, Metric

SINGLE = Metric("single", "single enqueue", "jobs/s", True)
BULK = Metric("bulk", "bulk enqueue", "jobs/s", True)
WARMUP = 200


class Enqueue:
    name = "enqueue"
    metrics: tuple[Metric, ...] = (SINGLE, BULK)
    implemented = True

    def skip_reason(self, system: System, metric: Metric) -> str | None:
        if not system.uses_redis:
            return "PostgreSQL-only system"
        if metric is BULK and not system.bulk_api:
            return system.no_bulk_reason
        return None

    def run(self, system: System, ctx: Context) -> dict[str, float]:
        s = ctx.sizes
        out: dict[str, float] = {}
        system.flush()
        system.enqueue_single(WARMUP)  # connections, scripts, imports
        system.flush()
        out[SINGLE.key] = s.single / system.enqueue_single(s.single)
        system.flush()
        if system.bulk_api:
            system.enqueue_bulk(WARMUP)
            system.flush()
            out[BULK.key] = s.bulk / system.enqueue_bulk(s.bulk)
            system.flush()
        return out


SCENARIO = Enqueue()
