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
    drain_share = 0.25
    bulk_api = "kombu Producer.batch() + apply_async (pipelined LPUSH, 1000 per round trip)"
    config = (f"celery -A benchmarks.apps.celery_app worker -P {POOL} -c {CONCURRENCY} "
              "-l WARNING --without-gossip --without-mingle --without-heartbeat; "
              f"worker_prefetch_multiplier={PREFETCH_MULTIPLIER}, task_ignore_result=True")

    def open(self) -> None:
        from ..apps import celery_app

        self.app = celery_app

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
