"""Drain: N no-op jobs already queued, then 1 or 2 worker processes start.

N is ``Sizes.drain`` scaled by the system's ``drain_share`` (see ``System``).

The figure is N / (last completion - first pickup), both taken inside the workers by
:mod:`benchmarks.probe`, so worker start-up time is not counted.
"""

from __future__ import annotations

import time
import uuid

from ..common import Workers, control
from ..systems import System
from .base import Context, Metric, worker_skip_reason

DRAIN_1 = Metric("drain1", "drain, 1 process", "jobs/s", True)
DRAIN_2 = Metric("drain2", "drain, 2 processes", "jobs/s", True)
START_TIMEOUT = 60.0   # seconds until the first job must have run
STALL_TIMEOUT = 30.0   # seconds without progress that fail the measurement
STALL_WARN = 0.5       # a pause this long between two jobs of one process is reported
START_SPREAD_WARN = 0.03  # a worker process starting this share of the window late is reported


def drain(system: System, ctx: Context, procs: int) -> float:
    n = max(100, int(ctx.sizes.drain * system.drain_share))
    system.flush()
    system.prefill(n)
    try:
        return run_workers(system.name, [system.worker_command()] * procs, system.worker_env(), n, ctx)
    finally:
        system.flush()


def run_workers(label: str, commands: list[list[str]], env: dict[str, str], n: int,
                ctx: Context) -> float:
    """Start ``commands`` (with a fresh probe key), wait until the probes count ``n`` jobs,
    stop the workers; jobs/s from the first job started to the last one finished."""
    run = uuid.uuid4().hex
    key = f"probe:{run}"
    ctl = control()
    workers = Workers(commands, {**env, "BENCH_RUN": run}, ctx.logdir / f"{label}.log")
    try:
        done, progress_at = 0, time.monotonic() + START_TIMEOUT - STALL_TIMEOUT
        while True:
            time.sleep(0.05)
            rows = [v.decode().split() for v in ctl.hgetall(key).values()]  # type: ignore[union-attr]
            total = sum(int(r[2]) for r in rows)
            if total >= n:
                first = min(float(r[0]) for r in rows)
                last = max(float(r[1]) for r in rows)
                gap = max(float(r[3]) for r in rows)
                if gap > STALL_WARN:
                    ctx.say(f"  {label}: a worker paused {gap:.2f}s between two jobs")
                late = max(float(r[0]) for r in rows) - first
                if late > START_SPREAD_WARN * (last - first):
                    ctx.say(f"  {label}: the last worker started {late:.2f}s after the first "
                            f"({late / (last - first):.0%} of the window)")
                return n / (last - first)
            now = time.monotonic()
            if total > done:
                done, progress_at = total, now
            elif now - progress_at > STALL_TIMEOUT:
                raise TimeoutError(f"stalled at {total}/{n} jobs (see {workers.log_path})")
            if workers.dead():
                raise RuntimeError(f"a worker exited at {total}/{n} jobs (see {workers.log_path})")
    finally:
        workers.stop()
        ctl.delete(key)


class Drain:
    name = "drain"
    metrics: tuple[Metric, ...] = (DRAIN_1, DRAIN_2)
    implemented = True

    def skip_reason(self, system: System, metric: Metric) -> str | None:
        return worker_skip_reason(system)

    def run(self, system: System, ctx: Context) -> dict[str, float]:
        return {DRAIN_1.key: drain(system, ctx, 1), DRAIN_2.key: drain(system, ctx, 2)}


SCENARIO = Drain()
