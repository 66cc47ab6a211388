"""``python -m benchmarks.tracing_overhead``: reconcile with ``tracing = "otel"`` against
``tracing = "off"``, interleaved in rounds, on the rows tracing touches.

Rows (each measured once per mode per round, the order of the modes alternating):

* single enqueue: a loop of ``perform_async`` calls; jobs/s;
* bulk enqueue: one ``perform_bulk`` of N jobs; jobs/s;
* pass: one ``run_pass`` over N pending rows whose keys are not queued (the
  namespace is emptied first); keys/s. The run checks that the pass took its fast
  path (``pass_enqueue.lua`` calls, no ``client.enqueue``) and, with tracing on,
  that its payloads carry the pass span's ``traceparent``;
* drain: one ``reconcile worker`` process (``-c 10``), started and warmed up, then N
  no-op jobs enqueued in bulk; jobs/s from the enqueue to the last ack (the
  namespace's ``processed`` counter);
* reconciled drain: a pass enqueues N ReconciledJob keys and one worker process
  (``-c 16``) runs them, each in its PostgreSQL transaction (log an effect, mark the
  row done: :mod:`benchmarks.reconciled_jobs`); checked for N effects, none doubled.

With tracing on, both the driver and the worker install the OpenTelemetry SDK as an
application would (:mod:`benchmarks.tracing_app`: ``BatchSpanProcessor`` in front of
an exporter that encodes spans as OTLP protobuf and drops them). The ratio on / off is
taken within each round and the median over rounds is reported.

It uses its own Redis namespace on ``REDIS_URL`` (default db 0; removed at the end,
nothing else is flushed), or with ``--private-redis`` a redis-server of its own, whose
``INFO commandstats`` then gives Redis's time per job or key; and its own PostgreSQL
schema in ``DATABASE_URL``'s database (dropped at the end). So it can run beside the
main harness, whose Redis databases it does not touch.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import orjson
import redis
import sqlalchemy as sa

from .common import ROOT

MODES = ("off", "otel")
ROWS = (("single", "single enqueue", "jobs/s"), ("bulk", "bulk enqueue", "jobs/s"),
        ("pass", "pass", "keys/s"), ("drain", "drain, 1 process", "jobs/s"),
        ("rdrain", "reconciled drain", "jobs/s"))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tracing_overhead", description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rows", default=",".join(r for r, _, _ in ROWS),
                   help=f"comma-separated rows to run (default all: {','.join(r for r, _, _ in ROWS)})")
    p.add_argument("--single", type=int, default=5_000, help="single enqueues per measurement")
    p.add_argument("--bulk", type=int, default=50_000, help="jobs of the bulk enqueue")
    p.add_argument("--pass-rows", type=int, default=200_000, help="pending rows of the pass")
    p.add_argument("--drain", type=int, default=20_000, help="jobs drained")
    p.add_argument("--rdrain", type=int, default=3_000, help="ReconciledJobs drained")
    p.add_argument("--private-redis", action="store_true",
                   help="run on a private redis-server (a free port), and report Redis's own time per "
                        "job or key (INFO commandstats: every command on it is this run's)")
    return p.parse_args(argv)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from reconcile.config import load_settings

        self.args = args
        self.private: subprocess.Popen[bytes] | None = None
        if args.private_redis:
            port = free_port()
            self.private = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
            self.redis_url = f"redis://127.0.0.1:{port}/0"
            self.wait(lambda: _pings(self.redis_url), 10, "the private redis-server")
        else:
            self.redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        self.server = redis.Redis.from_url(self.redis_url)
        base = os.environ.get("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
        self.schema = f"bench_otel_{os.getpid()}"
        self.admin = sa.create_engine(base, poolclass=sa.pool.NullPool)
        sep = "&" if "?" in base else "?"
        self.db_url = f"{base}{sep}options={quote(f'-csearch_path={self.schema}')}"
        self.namespace = f"otelbench{os.getpid()}"
        self.settings = {
            mode: load_settings({"redis_url": self.redis_url, "database_url": self.db_url,
                                 "namespace": self.namespace, "tracing": mode, "log_level": "WARNING"},
                                env={}, pyproject=False)
            for mode in MODES
        }

    # -- set-up ------------------------------------------------------------------------

    def open(self) -> None:
        from reconcile.store import migrate

        from . import pg

        with self.admin.begin() as c:
            c.execute(sa.text(f'CREATE SCHEMA "{self.schema}"'))
        migrate.upgrade(self.db_url)
        self.pg = sa.create_engine(self.db_url, pool_size=2)
        pg.seed_pass_items(self.pg, self.args.pass_rows)
        pg.create_items(self.pg)

    def close(self) -> None:
        from reconcile.broker import get_broker
        from reconcile.store.engine import dispose_engines

        get_broker(self.settings["off"]).flush_namespace()
        dispose_engines()
        self.pg.dispose()
        with self.admin.begin() as c:
            c.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
        if self.private is not None:
            self.private.terminate()
            self.private.wait(10)

    def use(self, mode: str) -> Any:
        from reconcile.broker import get_broker
        from reconcile.config import use_settings

        s = self.settings[mode]
        use_settings(s)
        broker = get_broker(s)
        broker.flush_namespace()
        return s, broker

    # -- the rows ----------------------------------------------------------------------

    def single(self, mode: str) -> tuple[float, float, float]:
        from .tracing_app import Noop

        self.use(mode)
        n = self.args.single
        for i in range(200):  # warm-up: connections, scripts loaded
            Noop.perform_async(i)
        fn = Noop.perform_async
        t = self.start()
        for i in range(n):
            fn(i)
        return self.rate(n, t)

    def bulk(self, mode: str) -> tuple[float, float, float]:
        from .tracing_app import Noop

        self.use(mode)
        n = self.args.bulk
        Noop.perform_bulk([[i] for i in range(1000)])  # warm-up
        args = [[i] for i in range(n)]
        t = self.start()
        Noop.perform_bulk(args)
        return self.rate(n, t)

    def pass_(self, mode: str) -> tuple[float, float, float]:
        from reconcile import client
        from reconcile.broker.pass_push import PassPusher
        from reconcile.scheduler.passes import run_pass

        from .reconciled_jobs import PassItem

        s, broker = self.use(mode)
        calls = {"push": 0, "enqueue": 0}
        real_push, real_enqueue = PassPusher.push, client.enqueue

        def push(*a: Any, **k: Any) -> Any:
            calls["push"] += 1
            return real_push(*a, **k)

        def enqueue(*a: Any, **k: Any) -> Any:
            calls["enqueue"] += 1
            return real_enqueue(*a, **k)

        PassPusher.push, client.enqueue = push, enqueue  # type: ignore[method-assign, assignment]
        try:
            t = self.start()
            result = run_pass(PassItem, trigger="manual", owner="bench", settings=s)
            rate = self.rate(result.enqueued, t)
        finally:
            PassPusher.push, client.enqueue = real_push, real_enqueue  # type: ignore[method-assign]
        if result.error or result.enqueued != self.args.pass_rows:
            raise RuntimeError(f"pass: {result.summary()}")
        if not calls["push"] or calls["enqueue"]:
            raise RuntimeError(f"the pass left its fast path with tracing {mode}: {calls}")
        first = orjson.loads(broker.queue_entries(PassItem.queue, 1)[0])
        if ("traceparent" in first) != (mode == "otel"):
            raise RuntimeError(f"tracing {mode}: payload {first}")
        return rate

    def drain(self, mode: str) -> tuple[float, float, float]:
        from .tracing_app import Noop

        _, broker = self.use(mode)
        n = self.args.drain
        with self.worker(mode, ["-q", "tdrain", "-c", "10"], broker):
            t = self.start()
            Noop.perform_bulk([[i] for i in range(n)])
            self.wait(lambda: broker.counters()["processed"] >= n + 1, 300, f"{n} jobs drained")
            return self.rate(n, t)

    def rdrain(self, mode: str) -> tuple[float, float, float]:
        """A pass enqueues N ReconciledJob keys (one PostgreSQL transaction each), and
        one worker process (``-c 16``) drains them."""
        from reconcile.scheduler.passes import run_pass

        from . import pg
        from .reconciled_jobs import ProcessItem

        s, broker = self.use(mode)
        n = self.args.rdrain
        pg.seed_items(self.pg, n)
        args = ["-q", "rdrain", "-q", "tdrain", "-c", "16", "--app", "benchmarks.reconciled_jobs",
                "--database-url", self.db_url]
        with self.worker(mode, args, broker):
            t = self.start()
            result = run_pass(ProcessItem, trigger="manual", owner="bench", settings=s)
            if result.error or result.enqueued != n:
                raise RuntimeError(f"pass: {result.summary()}")
            self.wait(lambda: broker.counters()["processed"] >= n + 1, 300, f"{n} keys drained")
            rate = self.rate(n, t)
        done, effects, dup = pg.items_state(self.pg)
        if (done, effects, dup) != (n, n, 0):
            raise RuntimeError(f"reconciled drain: {done} done, {effects} effects, {dup} duplicated of {n}")
        return rate

    @contextlib.contextmanager
    def worker(self, mode: str, args: list[str], broker: Any) -> Iterator[None]:
        """One ``reconcile worker`` process with ``tracing = mode``, up and warmed up
        (it has run one no-op job) on entry, stopped on exit."""
        from .tracing_app import Noop

        env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE_")}
        env.update(PYTHONPATH=str(ROOT), RECONCILE_TRACING=mode)
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconcile", "worker", "--app", "benchmarks.tracing_app", *args,
             "--redis-url", self.redis_url, "--namespace", self.namespace, "--log-level", "WARNING"],
            env=env, cwd=ROOT)
        try:
            Noop.perform_async(-1)
            self.wait(lambda: broker.counters()["processed"] >= 1, 60, "the worker's first job")
            self.worker_pid = proc.pid
            yield
        finally:
            self.worker_pid = 0
            proc.terminate()
            proc.wait(30)

    # -- measuring ---------------------------------------------------------------------

    worker_pid = 0

    def cpu(self) -> float:
        """CPU seconds used so far by this process (every thread: the span exporter's
        included) and by the worker process being measured, if any."""
        used = time.process_time()
        if self.worker_pid:
            with open(f"/proc/{self.worker_pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            used += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        return used

    def redis_usec(self) -> float:
        """Microseconds the Redis server spent in commands so far (all clients: only
        meaningful on a private server)."""
        stats = self.server.info("commandstats")
        return float(sum(v["usec"] for v in stats.values()))

    def start(self) -> tuple[float, float, float]:
        return time.perf_counter(), self.cpu(), self.redis_usec() if self.private else 0.0

    def rate(self, n: int, started: tuple[float, float, float]) -> tuple[float, float, float]:
        """(jobs or keys per second, CPU microseconds per job or key, Redis microseconds
        per job or key: 0 without a private server) since ``started``."""
        wall, cpu = time.perf_counter() - started[0], self.cpu() - started[1]
        spent = self.redis_usec() - started[2] if self.private else 0.0
        return n / wall, cpu / n * 1e6, spent / n

    @staticmethod
    def wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.002)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.RedisError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    chosen = [r for r in ROWS if r[0] in args.rows.split(",")]
    unknown = set(args.rows.split(",")) - {r for r, _, _ in ROWS}
    if unknown or not chosen:
        sys.exit(f"unknown rows {', '.join(sorted(unknown))}; known: {', '.join(r for r, _, _ in ROWS)}")
    from .tracing_app import install_sdk

    exporter = install_sdk()  # used only while the settings say tracing = "otel"
    bench = Bench(args)
    print(f"tracing off vs otel: {args.rounds} rounds, single {args.single:,}, bulk {args.bulk:,}, "
          f"pass rows {args.pass_rows:,}, drain {args.drain:,}; exporter: {exporter}", flush=True)
    bench.open()
    runs: dict[str, dict[str, list[float]]] = {row: {m: [] for m in MODES} for row, _, _ in chosen}
    cpus: dict[str, dict[str, list[float]]] = {row: {m: [] for m in MODES} for row, _, _ in chosen}
    in_redis: dict[str, dict[str, list[float]]] = {row: {m: [] for m in MODES} for row, _, _ in chosen}
    try:
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds} (load average {os.getloadavg()[0]:.1f})", flush=True)
            for row, label, unit in chosen:
                fn = getattr(bench, "pass_" if row == "pass" else row)
                for mode in MODES if r % 2 == 0 else tuple(reversed(MODES)):
                    value, cpu, spent = fn(mode)
                    runs[row][mode].append(value)
                    cpus[row][mode].append(cpu)
                    in_redis[row][mode].append(spent)
                    shown = f", {spent:6.2f} us in Redis" if args.private_redis else ""
                    print(f"  {label:18} tracing {mode:4}: {value:12,.0f} {unit}, {cpu:8.1f} us CPU each"
                          f"{shown}", flush=True)
    finally:
        bench.close()
    print("\nThroughput (wall clock):\n")
    print("| row | tracing off | tracing otel | otel / off, median of rounds (per round) |")
    print("|---|---|---|---|")
    for row, label, unit in chosen:
        off, on = runs[row]["off"], runs[row]["otel"]
        ratios = [b / a for a, b in zip(off, on, strict=True)]
        print(f"| {label} | {statistics.median(off):,.0f} {unit} | {statistics.median(on):,.0f} {unit} | "
              f"{statistics.median(ratios):.3f} ({', '.join(f'{x:.3f}' for x in ratios)}) |")
    print("\nCPU per job or key (driver process, plus the worker process for the drains; less "
          "sensitive to other load than the wall clock):\n")
    print("| row | tracing off | tracing otel | otel - off, median of rounds (per round) |")
    print("|---|---|---|---|")
    for row, label, _ in chosen:
        off, on = cpus[row]["off"], cpus[row]["otel"]
        extra = [b - a for a, b in zip(off, on, strict=True)]
        print(f"| {label} | {statistics.median(off):,.1f} us | {statistics.median(on):,.1f} us | "
              f"{statistics.median(extra):+,.1f} us ({', '.join(f'{x:+.1f}' for x in extra)}) |")
    if args.private_redis:
        print("\nRedis's own time per job or key (INFO commandstats of the private server):\n")
        print("| row | tracing off | tracing otel | otel / off, median of rounds (per round) |")
        print("|---|---|---|---|")
        for row, label, _ in chosen:
            off, on = in_redis[row]["off"], in_redis[row]["otel"]
            ratios = [b / a for a, b in zip(off, on, strict=True)]
            print(f"| {label} | {statistics.median(off):,.2f} us | {statistics.median(on):,.2f} us | "
                  f"{statistics.median(ratios):.3f} ({', '.join(f'{x:.3f}' for x in ratios)}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
