"""Raw redis-py: the floor under every system's enqueue (LPUSH loop, pipelined LPUSH)."""

from __future__ import annotations

import time

import orjson
import redis

from ..common import DBS, url
from .base import System, redis_url_of

KEY = "bench:queue"


def payload(i: int) -> bytes:
    """A reconcile-shaped payload, so the bytes on the wire match reconcile's."""
    return orjson.dumps({
        "queue": "default", "jid": "0" * 24, "class": "bench.Noop", "args": [i],
        "created_at": 1.7e9, "retry": True, "enqueued_at": 1.7e9,
    })


class RawRedis(System):
    name = "redis"
    package = "redis"
    bulk_api = "pipeline(transaction=False) of LPUSH, 1000 per round trip"
    runs_workers = False
    config = "redis-py client, hiredis parser; no job system"

    def open(self) -> None:
        self.r = redis.Redis.from_url(url(DBS["redis"]))

    def urls(self) -> list[tuple[str, str]]:
        return [("driver: redis-py client", redis_url_of(self.r))]

    def enqueue_single(self, n: int) -> float:
        data = [payload(i) for i in range(n)]
        lpush = self.r.lpush
        t = time.perf_counter()
        for d in data:
            lpush(KEY, d)
        return time.perf_counter() - t

    def enqueue_bulk(self, n: int) -> float:
        data = [payload(i) for i in range(n)]
        t = time.perf_counter()
        for s in range(0, n, 1000):
            pipe = self.r.pipeline(transaction=False)
            for d in data[s:s + 1000]:
                pipe.lpush(KEY, d)
            pipe.execute()
        return time.perf_counter() - t
