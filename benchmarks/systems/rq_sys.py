"""rq (SimpleWorker: jobs run in the worker process, no fork per job)."""

from __future__ import annotations

import time

from ..common import DBS, tool, url
from .base import System, arg_after, redis_url_of, timed_loop


class RQ(System):
    name = "rq"
    package = "rq"
    worker_preload = ("benchmarks.apps.rq_app",)
    bulk_api = "Queue.enqueue_many (one pipeline)"
    config = ("rq worker -w rq.worker.SimpleWorker --logging_level WARNING "
              "--disable-job-desc-logging default; defaults otherwise (result_ttl=0 was not faster)")

    def open(self) -> None:
        import redis
        from rq import Queue

        from ..apps import rq_app

        self.app = rq_app
        self.queue = Queue("default", connection=redis.Redis.from_url(url(DBS["rq"])))

    def urls(self) -> list[tuple[str, str]]:
        return [("driver: Queue connection", redis_url_of(self.queue.connection)),
                ("worker: rq worker -u", arg_after(self.worker_command(), "-u"))]

    def enqueue_single(self, n: int) -> float:
        q, fn = self.queue, self.app.noop
        return timed_loop(n, lambda i: q.enqueue(fn, i))

    def enqueue_bulk(self, n: int) -> float:
        q, fn = self.queue, self.app.noop
        t = time.perf_counter()
        for start in range(0, n, 1000):
            q.enqueue_many([q.prepare_data(fn, (i,))
                            for i in range(start, min(n, start + 1000))])
        return time.perf_counter() - t

    def send_latency(self) -> None:
        self.queue.enqueue(self.app.lat, time.time())

    def worker_command(self) -> list[str]:
        return [tool("rq"), "worker", "-u", url(DBS["rq"]), "-w", "rq.worker.SimpleWorker",
                "--logging_level", "WARNING", "--disable-job-desc-logging", "default"]
