"""huey tasks on the benchmark's Redis database (blocking BRPOP, results off)."""

from __future__ import annotations

from huey import RedisHuey

from .. import probe
from ..common import DBS, url

huey = RedisHuey("bench", url=url(DBS["huey"]), results=False, blocking=True)


@huey.task()
def noop(i: int) -> None:
    probe.hit()


@huey.task()
def lat(t0: float) -> None:
    probe.latency(t0)
