"""Pickup latency on an idle worker: enqueue-call start to perform start.

One worker process; one job at a time, each sent after a random pause so the worker
is idle (blocked or polling, as the system does it) when the job arrives. The job
reports ``time.time() - t0`` through the control database.
"""

from __future__ import annotations

import math
import random
import time
import uuid

from ..common import Workers, control
from ..systems import System
from .base import Context, Metric, worker_skip_reason
from .drain import check_modules

P50 = Metric("p50", "pickup p50", "ms", False)
P99 = Metric("p99", "pickup p99", "ms", False)
WARMUP = 5
PAUSE = (0.005, 0.03)     # seconds of idleness before each job
START_TIMEOUT = 60.0
REPLY_TIMEOUT = 10.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Latency:
    name = "latency"
    metrics: tuple[Metric, ...] = (P50, P99)
    implemented = True

    def skip_reason(self, system: System, metric: Metric) -> str | None:
        return worker_skip_reason(system)

    def run(self, system: System, ctx: Context) -> dict[str, float]:
        system.flush()
        run = uuid.uuid4().hex
        key = f"lat:{run}"
        ctl = control()
        workers = Workers([system.worker_command()], {**system.worker_env(), "BENCH_RUN": run},
                          ctx.logdir / f"{system.name}.log", system.worker_preload)
        try:
            workers.release()
            check_modules(system.name, workers, system.expected_modules(), ctx)
            samples: list[float] = []
            for i in range(WARMUP + ctx.sizes.latency):
                time.sleep(random.uniform(*PAUSE))
                system.send_latency()
                got = ctl.blpop([key], timeout=START_TIMEOUT if i == 0 else REPLY_TIMEOUT)
                if got is None:
                    raise TimeoutError(f"no pickup within the timeout (see {workers.log_path})")
                if i >= WARMUP:
                    samples.append(float(got[1]) * 1000)
            return {P50.key: percentile(samples, 0.50), P99.key: percentile(samples, 0.99)}
        finally:
            workers.stop()
            ctl.delete(key)
            system.flush()


SCENARIO = Latency()
