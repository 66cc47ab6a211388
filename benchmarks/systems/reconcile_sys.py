"""reconcile itself."""

from __future__ import annotations

import os
import time

from ..common import DBS, python, url
from .base import System, timed_loop

CONCURRENCY = 10


def _cli_has_worker() -> bool:
    try:
        from reconcile import cli
    except ImportError:
        return False
    return hasattr(cli, "worker")


class Reconcile(System):
    name = "reconcile"
    package = "reconcile"
    drain_share = 4.0
    bulk_api = "perform_bulk"
    config = (f"reconcile worker --app benchmarks.jobs -q default -c {CONCURRENCY} "
              "--namespace bench --log-level WARNING (prefetch default = concurrency)")

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
        if not _cli_has_worker():  # fallback while the CLI lacks the command
            return [python(), "-m", "benchmarks.apps.reconcile_worker",
                    "-c", str(CONCURRENCY), *extra]
        return [python(), "-m", "reconcile", "worker", "--app", "benchmarks.jobs",
                "-q", "default", "-c", str(CONCURRENCY), "--redis-url", url(DBS["reconcile"]),
                "--namespace", "bench", "--log-level", "WARNING", *extra]
