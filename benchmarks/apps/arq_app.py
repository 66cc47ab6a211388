"""arq functions and worker settings; ``python -m benchmarks.apps.arq_app`` runs a worker.

Running through ``arq.run_worker`` rather than the ``arq`` CLI only keeps logging at
WARNING (the CLI logs every job at INFO, as the other systems are not allowed to).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from arq import run_worker
from arq.connections import RedisSettings

from .. import probe
from ..common import DBS, url
from ..systems.arq_sys import MAX_JOBS, POLL_DELAY

REDIS = RedisSettings.from_dsn(url(DBS["arq"]))


async def noop(ctx: dict[str, Any], i: int) -> None:
    probe.hit()


async def lat(ctx: dict[str, Any], t0: float) -> None:
    probe.latency(t0)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop, lat]
    redis_settings = REDIS
    max_jobs = MAX_JOBS
    poll_delay = POLL_DELAY
    keep_result = 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    run_worker(WorkerSettings)  # type: ignore[arg-type]
