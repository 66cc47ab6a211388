"""dramatiq with its Redis broker."""

from __future__ import annotations

import time

from ..common import tool
from .base import System, redis_url_of, timed_loop

THREADS = 4
PREFETCH = 300


class Dramatiq(System):
    name = "dramatiq"
    package = "dramatiq"
    no_bulk_reason = "no bulk API: group() and pipeline() send one message per round trip"
    config = (f"dramatiq benchmarks.apps.dramatiq_app --processes 1 --threads {THREADS}; "
              f"dramatiq_queue_prefetch={PREFETCH}; default middleware, max_retries=0")

    # the CLI forks its worker process after the gate: what the fork imports comes first
    worker_preload = ("benchmarks.apps.dramatiq_app", "multiprocessing.connection",
                      "multiprocessing.popen_fork", "multiprocessing.synchronize")

    def open(self) -> None:
        from ..apps import dramatiq_app

        self.app = dramatiq_app

    def urls(self) -> list[tuple[str, str]]:
        # the worker imports the same broker module, so its URL is this one
        return [("driver and worker: RedisBroker", redis_url_of(self.app.broker.client))]

    def enqueue_single(self, n: int) -> float:
        return timed_loop(n, self.app.noop.send)

    def send_latency(self) -> None:
        self.app.lat.send(time.time())

    def worker_env(self) -> dict[str, str]:
        return {"dramatiq_queue_prefetch": str(PREFETCH)}

    def worker_command(self) -> list[str]:
        return [tool("dramatiq"), "benchmarks.apps.dramatiq_app", "--processes", "1",
                "--threads", str(THREADS)]
