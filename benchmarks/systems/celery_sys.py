"""celery with the Redis transport (kombu)."""

from __future__ import annotations

import time

from ..common import tool
from .base import System, timed_loop

POOL = "threads"
CONCURRENCY = 10
PREFETCH_MULTIPLIER = 16


class Celery(System):
    name = "celery"
    package = "celery"
    # the celery command imports its subcommands, the worker and its bootsteps lazily
    worker_preload = ("benchmarks.apps.celery_app", "celery.bin.celery", "celery.apps.worker",
                      "celery.worker.consumer", "celery.worker.components", "celery.concurrency.thread",
                      "celery.app.trace", "kombu.transport.redis")
    bulk_api = "kombu Producer.batch() + apply_async (pipelined LPUSH, 1000 per round trip)"
    config = (f"celery -A benchmarks.apps.celery_app worker -P {POOL} -c {CONCURRENCY} "
              "-l WARNING --without-gossip --without-mingle --without-heartbeat; "
              f"worker_prefetch_multiplier={PREFETCH_MULTIPLIER}, task_ignore_result=True")

    def open(self) -> None:
        from ..apps import celery_app

        self.app = celery_app

    def urls(self) -> list[tuple[str, str]]:
        # the worker loads the same app module (-A), so its broker URL is this one
        return [("driver and worker: app broker", self.app.app.connection_for_write().as_uri(
            include_password=True))]

    def enqueue_single(self, n: int) -> float:
        return timed_loop(n, self.app.noop.delay)

    def enqueue_bulk(self, n: int) -> float:
        task = self.app.noop
        t = time.perf_counter()
        with self.app.app.producer_or_acquire() as producer, producer.batch(1000):
            for i in range(n):
                task.apply_async((i,), producer=producer)
        return time.perf_counter() - t

    def send_latency(self) -> None:
        self.app.lat.delay(time.time())

    def worker_command(self) -> list[str]:
        return [tool("celery"), "-A", "benchmarks.apps.celery_app", "worker", "-P", POOL,
                "-c", str(CONCURRENCY), "-l", "WARNING", "--without-gossip",
                "--without-mingle", "--without-heartbeat"]
