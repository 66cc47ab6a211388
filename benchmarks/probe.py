"""Instrumentation that runs inside worker processes, identical for every system.

``hit()`` is the whole body of the no-op drain job: it counts the job and records the
first and last perform times of this process in memory; a daemon thread publishes
them (and the longest pause between two jobs) every 20 ms to the control database
(``probe:<BENCH_RUN>`` hash, field = pid, value "first last count gap"), so
the driver can compute "first pickup to last completion" across processes without a
Redis round trip per job. ``latency(t0)`` is the latency job's body: it reports how
long ago the enqueue call started.
"""

from __future__ import annotations

import os
import threading
import time

import redis

from .common import CONTROL_DB, url

PUBLISH_EVERY = 0.02


class _Probe:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.first = 0.0
        self.last = 0.0
        self.count = 0
        self.gap = 0.0  # longest pause between two consecutive jobs (stall detector)
        self.redis = redis.Redis.from_url(url(CONTROL_DB))
        self.key = f"probe:{os.environ.get('BENCH_RUN', 'none')}"
        threading.Thread(target=self._publish, name="bench-probe", daemon=True).start()

    def hit(self) -> None:
        now = time.time()
        with self.lock:
            if not self.count:
                self.first = now
            elif now - self.last > self.gap:
                self.gap = now - self.last
            self.last = now
            self.count += 1

    def _publish(self) -> None:
        sent = -1
        while True:
            time.sleep(PUBLISH_EVERY)
            with self.lock:
                first, last, count, gap = self.first, self.last, self.count, self.gap
            if count != sent:
                try:
                    self.redis.hset(self.key, str(self.pid), f"{first!r} {last!r} {count} {gap!r}")
                    sent = count
                except redis.RedisError:
                    pass


_probe: _Probe | None = None
_guard = threading.Lock()


def _get() -> _Probe:
    global _probe
    p = _probe
    if p is None or p.pid != os.getpid():  # first use, or a forked child
        with _guard:
            if _probe is None or _probe.pid != os.getpid():
                _probe = _Probe()
            p = _probe
    return p


def hit() -> None:
    """Body of the no-op job."""
    _get().hit()


_lat_redis: dict[int, redis.Redis] = {}


def latency(t0: float) -> None:
    """Body of the latency job: report now - t0 (seconds) to the driver."""
    dt = time.time() - t0
    r = _lat_redis.get(os.getpid())
    if r is None:
        r = _lat_redis[os.getpid()] = redis.Redis.from_url(url(CONTROL_DB))
    r.rpush(f"lat:{os.environ.get('BENCH_RUN', 'none')}", repr(dt))
