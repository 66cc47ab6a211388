"""reconcile's benchmark jobs (the ``--app`` of the benchmark's reconcile workers)."""

from __future__ import annotations

from reconcile import Job

from . import probe


class Noop(Job):
    name = "bench.Noop"
    queue = "default"

    def perform(self, i: int) -> None:
        probe.hit()


class Latency(Job):
    name = "bench.Latency"
    queue = "default"

    def perform(self, t0: float) -> None:
        probe.latency(t0)
