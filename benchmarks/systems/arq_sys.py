"""arq (asyncio, Redis sorted-set queue polled every poll_delay)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..common import python
from .base import System, redis_url_of

MAX_JOBS = 100
POLL_DELAY = 0.01
CONCURRENT_ENQUEUES = 50  # prefill only: in-flight enqueue_job calls


class Arq(System):
    name = "arq"
    package = "arq"
    worker_preload = ("benchmarks.apps.arq_app",)
    no_bulk_reason = "no bulk API: enqueue_job() is one transaction per job"
    config = (f"run_worker(WorkerSettings) (= arq CLI with logging at WARNING): "
              f"max_jobs={MAX_JOBS}, poll_delay={POLL_DELAY}, keep_result=0")

    def open(self) -> None:
        from arq import create_pool

        from ..apps import arq_app

        self.loop = asyncio.new_event_loop()
        self.app = arq_app
        self.pool: Any = self.loop.run_until_complete(create_pool(arq_app.REDIS))

    def urls(self) -> list[tuple[str, str]]:
        rs = self.app.WorkerSettings.redis_settings
        return [("driver: create_pool()", redis_url_of(self.pool)),
                ("worker: WorkerSettings.redis_settings", f"redis://{rs.host}:{rs.port}/{rs.database}")]

    def close(self) -> None:
        self.loop.run_until_complete(self.pool.aclose())
        self.loop.close()

    def enqueue_single(self, n: int) -> float:
        async def go() -> float:
            enqueue = self.pool.enqueue_job
            t = time.perf_counter()
            for i in range(n):
                await enqueue("noop", i)
            return time.perf_counter() - t

        return self.loop.run_until_complete(go())

    def prefill(self, n: int) -> None:
        async def go() -> None:
            for s in range(0, n, CONCURRENT_ENQUEUES):
                await asyncio.gather(*(self.pool.enqueue_job("noop", i)
                                       for i in range(s, min(n, s + CONCURRENT_ENQUEUES))))

        self.loop.run_until_complete(go())

    def send_latency(self) -> None:
        async def go() -> None:
            await self.pool.enqueue_job("lat", time.time())

        self.loop.run_until_complete(go())

    def worker_command(self) -> list[str]:
        return [python(), "-m", "benchmarks.apps.arq_app"]
