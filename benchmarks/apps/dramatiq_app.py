"""dramatiq actors on the benchmark's Redis database (default middleware, no results)."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from .. import probe
from ..common import DBS, url

broker = RedisBroker(url=url(DBS["dramatiq"]))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="default", max_retries=0)
def noop(i: int) -> None:
    probe.hit()


@dramatiq.actor(queue_name="default", max_retries=0)
def lat(t0: float) -> None:
    probe.latency(t0)
