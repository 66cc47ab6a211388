"""Drain: N no-op jobs already queued, then 1 or 2 worker processes start.

N is ``Sizes.drain``, the same for every system.

Start-up accounting, the same for every system: the worker processes start behind
the start gate (:mod:`benchmarks.gate`), which imports the system's CLI and app
modules and reports ready; once every process is ready the driver opens the gate and
the clock starts. The figure is N / (last completion - gate opened), the completion
time taken inside the workers by :mod:`benchmarks.probe`. So the interpreter's start
and the imports are outside the window, and whatever a worker does after that
(connecting, starting its threads, its first fetch) is inside it, for one process
and for two.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

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
    n = ctx.sizes.drain
    system.flush()
    system.prefill(n)
    try:
        return run_workers(system.name, [system.worker_command()] * procs, system.worker_env(), n,
                           ctx, system.worker_preload, system.expected_modules())
    finally:
        system.flush()


def run_workers(label: str, commands: list[list[str]], env: dict[str, str], n: int,
                ctx: Context, preload: tuple[str, ...] = (),
                expect: dict[str, Path] | None = None) -> float:
    """Start ``commands`` behind the gate (with a fresh probe key), open the gate once
    all are ready, wait until the probes count ``n`` jobs, stop the workers; jobs/s from
    the gate's opening to the last job finished. ``expect``: package -> the directory
    every worker must have imported it from (else the measurement fails)."""
    run = uuid.uuid4().hex
    key = f"probe:{run}"
    ctl = control()
    workers = Workers(commands, {**env, "BENCH_RUN": run}, ctx.logdir / f"{label}.log", preload)
    try:
        released = workers.release()
        check_modules(label, workers, expect or {}, ctx)
        done, progress_at = 0, time.monotonic() + START_TIMEOUT - STALL_TIMEOUT
        while True:
            time.sleep(0.05)
            rows = [v.decode().split() for v in ctl.hgetall(key).values()]  # type: ignore[union-attr]
            total = sum(int(r[2]) for r in rows)
            if total >= n:
                last = max(float(r[1]) for r in rows)
                window = last - released
                gap = max(float(r[3]) for r in rows)
                if gap > STALL_WARN:
                    ctx.say(f"  {label}: a worker paused {gap:.2f}s between two jobs")
                firsts = sorted(float(r[0]) for r in rows)
                if len(rows) < len(commands):
                    ctx.say(f"  {label}: {len(commands) - len(rows)} of {len(commands)} worker "
                            "processes ran no job")
                if firsts[-1] - released > START_SPREAD_WARN * window:
                    ctx.say(f"  {label}: the last worker started its first job "
                            f"{firsts[-1] - released:.2f}s after the gate opened "
                            f"({(firsts[-1] - released) / window:.0%} of the window; the first "
                            f"{firsts[0] - released:.2f}s)")
                return n / window
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


_shown: set[tuple[str, str]] = set()


def check_modules(label: str, workers: Workers, expect: dict[str, Path], ctx: Context) -> None:
    """Fail unless every worker imported each package of ``expect`` from its directory;
    say once per system where it came from."""
    for ready in workers.ready:
        for package, where in expect.items():
            got = ready["modules"].get(package, "")
            if not got or not Path(got).resolve().is_relative_to(where.resolve()):
                raise RuntimeError(f"{label}: worker {ready['pid']} imported {package} from "
                                   f"{got or 'nowhere'}, not from {where}")
            if (label, package) not in _shown:
                _shown.add((label, package))
                ctx.say(f"  {label}: workers import {package} from {got}"
                        + (f" (preloads absent there: {', '.join(ready['absent'])})"
                           if ready.get("absent") else ""))


class Drain:
    name = "drain"
    metrics: tuple[Metric, ...] = (DRAIN_1, DRAIN_2)
    implemented = True

    def skip_reason(self, system: System, metric: Metric) -> str | None:
        return worker_skip_reason(system)

    def run(self, system: System, ctx: Context) -> dict[str, float]:
        return {DRAIN_1.key: drain(system, ctx, 1), DRAIN_2.key: drain(system, ctx, 2)}


SCENARIO = Drain()
