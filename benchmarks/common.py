"""Shared plumbing: where each system's Redis database is, sizes, worker processes.

Every system gets its own Redis database number on the same server (``BENCH_REDIS``,
default ``redis://127.0.0.1:6379``), flushed between measurements; the driver keeps
its own bookkeeping (probe reports, latency samples, the start gate) in ``CONTROL_DB``.
Every adapter takes its URLs from here (``url(db)``) and from :mod:`benchmarks.pg`;
:mod:`benchmarks.check` verifies it at the start of every run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
BASE_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379").rstrip("/")
DBS: dict[str, int] = {
    "redis": 6, "reconcile": 7, "dramatiq": 8, "huey": 9, "rq": 10,
    "arq": 11, "celery": 12, "saq": 13, "reconcile@ref": 5,
}
CONTROL_DB = 15
OWNER_KEY = "reconcile-bench:owner"
"""Marker set in every database the benchmark flushes; a database holding keys without
it belongs to someone else and the run refuses to touch it."""


def url(db: int) -> str:
    return f"{BASE_URL}/{db}"


def control() -> redis.Redis:
    return redis.Redis.from_url(url(CONTROL_DB))


def claim_db(db: int) -> None:
    """Refuse a database that holds keys the benchmark did not write; mark it ours."""
    r = redis.Redis.from_url(url(db))
    if r.dbsize() and not r.exists(OWNER_KEY):
        raise SystemExit(
            f"Redis db {db} at {BASE_URL} holds keys not written by the benchmark; "
            "empty it or set BENCH_REDIS to another server"
        )
    r.set(OWNER_KEY, "1")


def flush_db(db: int, asynchronous: bool = False) -> None:
    """Empty ``db`` (``asynchronous``: FLUSHDB ASYNC, for a database of a million keys that
    would otherwise block the shared server for a second) and mark it ours again."""
    r = redis.Redis.from_url(url(db))
    r.flushdb(asynchronous=asynchronous)
    r.set(OWNER_KEY, "1")


@dataclass(frozen=True)
class Sizes:
    single: int      # jobs in the single-enqueue loop
    bulk: int        # jobs in the bulk enqueue
    drain: int       # jobs drained per measurement, the same N for every system
    latency: int     # latency samples per round
    pass_rows: int   # pending rows scanned by the reconcile pass (reconciled section)
    rdrain: int      # reconciled-drain jobs, the same N for every system


QUICK = Sizes(single=500, bulk=5_000, drain=3_000, latency=30, pass_rows=100_000, rdrain=1_000)
FULL = Sizes(single=10_000, bulk=50_000, drain=30_000, latency=150, pass_rows=1_000_000, rdrain=6_000)


READY_TIMEOUT = 60.0  # seconds for every worker process to reach the gate


class Workers:
    """Worker processes started by the driver, each in its own process group, each
    behind the start gate (:mod:`benchmarks.gate`).

    ``preload`` lists the modules each process imports before it reports ready (the
    system's CLI and app modules). :meth:`release` waits until every process is ready,
    opens the gate and returns the time it did: the start of a drain's clock, the same
    accounting for every system (interpreter start and imports before it, connecting,
    spawning threads and the first fetch after it).
    """

    def __init__(self, commands: list[list[str]], env: dict[str, str], log: Path,
                 preload: tuple[str, ...] = ()) -> None:
        self.run = env.get("BENCH_RUN") or uuid.uuid4().hex
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env, "BENCH_RUN": self.run}
        flags = [f for m in preload for f in ("--preload", m)]
        self.log_path = log
        self._log = log.open("ab")
        self.ready: list[dict[str, Any]] = []
        self.procs = [
            subprocess.Popen(
                [python(), "-m", "benchmarks.gate", *flags, "--", *cmd], cwd=ROOT, env=full_env,
                stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            for cmd in commands
        ]

    def release(self, timeout: float = READY_TIMEOUT) -> float:
        """Wait until every process reported ready, open the gate; ``time.time()`` then."""
        from .gate import go_key, ready_key  # the gate imports this module

        ctl = control()
        deadline = time.monotonic() + timeout
        try:
            while len(self.ready) < len(self.procs):
                got = ctl.blpop([ready_key(self.run)], timeout=0.2)
                if got is not None:
                    self.ready.append(json.loads(got[1]))
                elif self.dead():
                    raise RuntimeError(f"a worker exited before it was ready (see {self.log_path})")
                elif time.monotonic() > deadline:
                    raise TimeoutError(f"{len(self.ready)}/{len(self.procs)} workers ready after "
                                       f"{timeout:.0f}s (see {self.log_path})")
            t0 = time.time()
            ctl.rpush(go_key(self.run), *["go"] * len(self.procs))
            return t0
        finally:
            ctl.close()

    def dead(self) -> list[int]:
        """Exit codes of processes that already ended."""
        return [rc for p in self.procs if (rc := p.poll()) is not None]

    def stop(self, grace: float = 8.0) -> None:
        """TERM each process group, then KILL what is left after ``grace`` seconds."""
        for p in self.procs:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
        for p in self.procs:
            _signal_group(p, signal.SIGKILL)  # children of a process that exited too
            p.wait()
        self._log.close()
        with contextlib.suppress(redis.RedisError):
            from .gate import go_key, ready_key

            control().delete(ready_key(self.run), go_key(self.run))


def _signal_group(p: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, sig)


def python() -> str:
    return sys.executable


def tool(name: str) -> str:
    """A console script installed next to this interpreter (``dramatiq``, ``rq`` ...)."""
    return str(Path(sys.executable).with_name(name))


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` ("?" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"
