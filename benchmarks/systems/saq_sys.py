"""saq (asyncio; BLMOVE-based dequeue)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..common import DBS, tool, url
from .base import System, redis_url_of

CONCURRENCY = 20
TTL = -1  # delete a finished job's record at once (results off)
CONCURRENT_ENQUEUES = 50  # prefill only


class Saq(System):
    name = "saq"
    package = "saq"
    worker_preload = ("benchmarks.apps.saq_app",)
    no_bulk_reason = "no bulk API: Queue.map() gathers one enqueue per job (and waits for results)"
    config = (f"saq benchmarks.apps.saq_app.settings --quiet: concurrency={CONCURRENCY}; "
              f"jobs enqueued with ttl={TTL} (no result kept)")

    def open(self) -> None:
        from saq import Queue

        self.loop = asyncio.new_event_loop()
        self.queue: Any = Queue.from_url(url(DBS["saq"]))
        self.loop.run_until_complete(self.queue.connect())

    def urls(self) -> list[tuple[str, str]]:
        from ..apps import saq_app

        return [("driver: Queue", redis_url_of(self.queue.redis)),
                ("worker: settings['queue']", redis_url_of(saq_app.settings["queue"].redis))]

    def close(self) -> None:
        self.loop.run_until_complete(self.queue.disconnect())
        self.loop.close()

    def enqueue_single(self, n: int) -> float:
        async def go() -> float:
            enqueue = self.queue.enqueue
            t = time.perf_counter()
            for i in range(n):
                await enqueue("noop", i=i, ttl=TTL)
            return time.perf_counter() - t

        return self.loop.run_until_complete(go())

    def prefill(self, n: int) -> None:
        async def go() -> None:
            for s in range(0, n, CONCURRENT_ENQUEUES):
                await asyncio.gather(*(self.queue.enqueue("noop", i=i, ttl=TTL)
                                       for i in range(s, min(n, s + CONCURRENT_ENQUEUES))))

        self.loop.run_until_complete(go())

    def send_latency(self) -> None:
        async def go() -> None:
            await self.queue.enqueue("lat", t0=time.time(), ttl=TTL)

        self.loop.run_until_complete(go())

    def worker_command(self) -> list[str]:
        return [tool("saq"), "benchmarks.apps.saq_app.settings", "--quiet"]
