"""Hook for the "reconciled" section (not implemented yet).

Planned: a reconcile pass over 1,000,000 pending rows in PostgreSQL (rows/s found and
enqueued), and the drain of ReconciledJobs (each key re-checked under its advisory
lock in one transaction) against procrastinate on the same PostgreSQL. It needs a
procrastinate adapter in ``benchmarks/systems/`` and a table fixture; the scenario
contract (``skip_reason`` / ``run``) is the same as the Redis-only ones.
"""

from __future__ import annotations

from ..systems import System
from .base import Context, Metric

PASS = Metric("reconcile_pass", "reconcile pass, 1M rows", "rows/s", True)
RECONCILED_DRAIN = Metric("reconciled_drain", "reconciled drain", "jobs/s", True)


class Reconciled:
    name = "reconciled"
    metrics: tuple[Metric, ...] = (PASS, RECONCILED_DRAIN)
    implemented = False

    def skip_reason(self, system: System, metric: Metric) -> str | None:
        return None if system.name in ("reconcile", "procrastinate") else "PostgreSQL-only section"

    def run(self, system: System, ctx: Context) -> dict[str, float]:
        raise NotImplementedError("the reconciled section is not implemented yet")


SCENARIO = Reconciled()
