"""A partitioned pass shared by 2 schedulers against 1 scheduler: keys/s.

``python -m benchmarks.partitioned_pass [--rows 1000000] [--partitions 4] [--rounds 3]``

Uses the machine's PostgreSQL (``DATABASE_URL``, default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``: a database ``bench_part`` is
created beside it, seeded once with ``--rows`` pending rows and a partial index on the
pending key, as the "reconciled" section's pass benchmark) and a private
``redis-server`` on a free port (restarted empty before each measurement: a first pass
of a million keys holds a few hundred MB).

Each measurement starts real ``reconcile scheduler`` processes (``--app`` this module;
:class:`PartItem` has ``partitions = BENCH_PARTITIONS``), waits until each has seen the
others alive (their fair share of partitions is ``ceil(N / live)``), then makes the
class's rows due and waits for one pass of every partition. The rate is the keys found
over the span from the first partition's ``started_at`` to the last one's
``finished_at`` (``reconcile_runs``, database clock), so process start-up and the tick
delay are not counted. Modes, interleaved each round: ``N=1, 1 scheduler`` (today's
pass), ``N partitions, 1 scheduler``, ``N partitions, 2 schedulers``; each makes two
passes, the first enqueuing every key, the second finding every key already queued
(the probe path: what a steady-state pass over a big backlog does). The bounds
computation (one ``row_number()`` over the pending keys) is timed on its own too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from reconcile import ReconciledJob

meta = sa.MetaData()
items = sa.Table("part_items", meta, sa.Column("id", sa.BigInteger, primary_key=True),
                 sa.Column("done", sa.Boolean, nullable=False))
sa.Index("ix_part_items_pending", items.c.id, postgresql_where=sa.not_(items.c.done))
DB = "bench_part"
ROOT = Path(__file__).resolve().parents[1]


class PartItem(ReconciledJob):
    name = "bench.PartItem"
    queue = "partpass"
    every = 3600  # passes are made due by the driver
    partitions = int(os.environ.get("BENCH_PARTITIONS", "1"))

    def pending(self) -> Select[Any]:
        return sa.select(items.c.id).where(sa.not_(items.c.done))

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        raise AssertionError("the benchmark only passes")


def _measure(url: str, partitions: int, schedulers: int) -> tuple[float, float, list[str]]:
    """Two passes of every partition by ``schedulers`` processes: (first pass keys/s,
    second pass keys/s, per-run lines)."""
    import redis

    from reconcile.broker import Broker
    from reconcile.config import load_settings
    from reconcile.store import schedules
    from tests.fault.servers import RedisServer

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as c:
        c.execute(sa.text("DELETE FROM reconcile_schedules; DELETE FROM reconcile_runs"))
    server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-part-redis-")))
    server.start()
    namespace = "partbench" + uuid.uuid4().hex[:6]
    settings = load_settings({"redis_url": server.url, "namespace": namespace}, env={},
                             pyproject=False)
    broker = Broker(settings)
    broker.set_epoch("bench")  # an established namespace: tick passes, not redis_loss
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECONCILE_", "BENCH_"))}
    env.update(RECONCILE_DATABASE_URL=url, RECONCILE_REDIS_URL=server.url,
               RECONCILE_NAMESPACE=namespace, RECONCILE_LOG_LEVEL="WARNING",
               BENCH_PARTITIONS=str(partitions))
    procs = []
    try:
        # rows due in an hour: nothing runs until every scheduler counts the others
        with engine.begin() as c:
            for i in range(partitions):
                name = PartItem.job_name if i == 0 else f"{PartItem.job_name}#{i}/{partitions}"
                spec = "every 3600s" + (f", {partitions} partitions" if partitions > 1 else "")
                c.execute(sa.text(
                    "INSERT INTO reconcile_schedules (name, kind, spec, next_run_at) "
                    "VALUES (:n, 'pass', :s, now() + interval '1 hour')"), {"n": name, "s": spec})
        for _ in range(schedulers):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "reconcile", "scheduler", "--app", "benchmarks.partitioned_pass"],
                cwd=ROOT, env=env))
        r = redis.Redis.from_url(server.url)
        alive = broker.keys.scheduler_alive("") + "*"
        deadline = time.monotonic() + 60
        while len(list(r.scan_iter(match=alive))) < schedulers:
            if time.monotonic() > deadline:
                raise RuntimeError("schedulers did not register")
            time.sleep(0.1)
        time.sleep(6.0)  # one beat (5 s) after the last registered: each counts every other
        rows = []
        for round_ in (1, 2):  # the first pass enqueues every key, the second finds them queued
            schedules.trigger_now(engine)
            deadline = time.monotonic() + 900
            while True:
                with engine.connect() as c:
                    done = c.execute(sa.text(
                        "SELECT count(*) FROM reconcile_runs WHERE finished_at IS NOT NULL")).scalar()
                if done == partitions * round_:
                    break
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"the passes did not finish ({done} of {partitions * round_})")
                time.sleep(0.05)
            with engine.connect() as c:
                rows.append(c.execute(sa.text(
                    "SELECT scheduler, partition_index, found, enqueued, error, started_at, finished_at "
                    "FROM reconcile_runs ORDER BY id OFFSET :o"), {"o": partitions * (round_ - 1)}).all())
        r.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
        server.stop()
        engine.dispose()
    out: list[float] = []
    lines: list[str] = []
    for which, runs in zip(("first", "second"), rows, strict=True):
        errors = [row.error for row in runs if row.error]
        if errors:
            raise RuntimeError(f"pass errors: {errors}")
        span = (max(row.finished_at for row in runs) - min(row.started_at for row in runs)).total_seconds()
        owners = sorted({row.scheduler for row in runs})
        out.append(sum(row.found for row in runs) / span)
        lines += [f"  {which} #{row.partition_index} scheduler {owners.index(row.scheduler) + 1}: "
                  f"found {row.found} enqueued {row.enqueued} in "
                  f"{(row.finished_at - row.started_at).total_seconds():.2f} s" for row in runs]
    return out[0], out[1], lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    opts = ap.parse_args()
    base = os.environ.get("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    admin_url = sa.engine.make_url(base)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as c:
        if not c.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": DB}).scalar():
            c.execute(sa.text(f'CREATE DATABASE "{DB}"'))
    admin.dispose()
    url = admin_url.set(database=DB).render_as_string(hide_password=False)
    from reconcile.store import migrate, partitions

    migrate.upgrade(url)
    bench = sa.create_engine(url)
    meta.create_all(bench)
    with bench.begin() as c:
        have = c.execute(sa.text("SELECT count(*) FROM part_items WHERE NOT done")).scalar()
        if have != opts.rows:
            c.execute(sa.text("TRUNCATE part_items"))
            c.execute(sa.text("INSERT INTO part_items SELECT g, false FROM generate_series(1, :n) g"),
                      {"n": opts.rows})
    with bench.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(sa.text("VACUUM ANALYZE part_items"))
    t = time.perf_counter()
    bounds = partitions.compute_bounds(bench, PartItem().pending(), opts.partitions)
    print(f"bounds for {opts.partitions} partitions over {opts.rows} keys: {bounds} in "
          f"{time.perf_counter() - t:.2f} s", flush=True)
    bench.dispose()
    n = opts.partitions
    modes = [("N=1, 1 scheduler", 1, 1), (f"N={n}, 1 scheduler", n, 1), (f"N={n}, 2 schedulers", n, 2)]
    rates: dict[str, dict[str, list[float]]] = {w: {m[0]: [] for m in modes} for w in ("first", "second")}
    for r in range(opts.rounds):
        order = modes if r % 2 == 0 else modes[::-1]
        for label, parts, scheds in order:
            first, second, lines = _measure(url, parts, scheds)
            rates["first"][label].append(first)
            rates["second"][label].append(second)
            print(f"round {r + 1} {label:22s} first pass {first:9.0f} keys/s, second {second:9.0f} keys/s",
                  flush=True)
            print("\n".join(lines), flush=True)
    for which, by_mode in rates.items():
        med = {k: statistics.median(v) for k, v in by_mode.items()}
        for k, v in by_mode.items():
            print(f"{which:6s} {k:22s} median {med[k]:9.0f} keys/s  (rounds: "
                  f"{', '.join(f'{x:.0f}' for x in v)})")
        print(f"{which} pass: 2 schedulers / 1 scheduler at N={n}: "
              f"{med[modes[2][0]] / med[modes[1][0]]:.2f}; N={n} 1 scheduler / N=1: "
              f"{med[modes[1][0]] / med[modes[0][0]]:.2f}; N={n} 2 schedulers / N=1: "
              f"{med[modes[2][0]] / med[modes[0][0]]:.2f} ({opts.rows} pending rows, "
              f"{opts.rounds} interleaved rounds)")


if __name__ == "__main__":
    main()
