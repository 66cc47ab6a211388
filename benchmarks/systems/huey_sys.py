"""huey with RedisHuey."""

from __future__ import annotations

import time

from ..common import tool
from .base import System, redis_url_of, timed_loop

WORKERS = 4


class Huey(System):
    name = "huey"
    package = "huey"
    no_bulk_reason = "no bulk API: Task.map() enqueues one task per round trip"
    config = (f"huey_consumer benchmarks.apps.huey_app.huey -k thread -w {WORKERS} -n -q; "
              "RedisHuey(blocking=True, results=False)")

    worker_preload = ("benchmarks.apps.huey_app",)

    def open(self) -> None:
        from ..apps import huey_app

        self.app = huey_app

    def urls(self) -> list[tuple[str, str]]:
        # the consumer loads the same RedisHuey instance by its dotted path
        return [("driver and worker: RedisHuey storage", redis_url_of(self.app.huey.storage.conn))]

    def enqueue_single(self, n: int) -> float:
        return timed_loop(n, self.app.noop)

    def send_latency(self) -> None:
        self.app.lat(time.time())

    def worker_command(self) -> list[str]:
        return [tool("huey_consumer"), "benchmarks.apps.huey_app.huey", "-k", "thread",
                "-w", str(WORKERS), "-n", "-q"]
