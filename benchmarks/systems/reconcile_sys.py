"""reconcile itself."""

from __future__ import annotations

import os
import time

from ..common import python
from .base import System, timed_loop


class Reconcile(System):
    name = "reconcile"
    package = "reconcile"
    drain_share = 2.0
    bulk_api = "perform_bulk"
    config = ("benchmarks.apps.reconcile_worker (= reconcile worker --app benchmarks.jobs "
              "-q default -c 10): 10 threads, prefetch 10, log level WARNING")

    def open(self) -> None:
        from reconcile.config import use_settings

        from .. import jobs
        from ..apps.reconcile_worker import settings_for

        use_settings(settings_for())
        self.jobs = jobs

    def enqueue_single(self, n: int) -> float:
        return timed_loop(n, self.jobs.Noop.perform_async)

    def enqueue_bulk(self, n: int) -> float:
        args = [(i,) for i in range(n)]
        t = time.perf_counter()
        self.jobs.Noop.perform_bulk(args)
        return time.perf_counter() - t

    def send_latency(self) -> None:
        self.jobs.Latency.perform_async(time.time())

    def worker_command(self) -> list[str]:
        extra = os.environ.get("BENCH_RECONCILE_ARGS", "").split()  # for tuning experiments
        return [python(), "-m", "benchmarks.apps.reconcile_worker", "-c", "10", *extra]
