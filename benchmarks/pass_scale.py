"""Reconcile passes at 1M / 5M / 10M rows, and Redis bytes per queued key.

Run as ``python -m benchmarks.pass_scale`` (see ``--help``). Not part of the
``python -m benchmarks`` rounds: a 10M-row table takes minutes to build and gigabytes
of Redis, so this script builds its tables once, in a database of its own
(``--database``, created if missing, dropped with ``--drop``), and starts a private
``redis-server`` on a free port for every pass (empty, ``maxmemory`` 0, persistence
off), which it stops afterwards. The shared Redis is never touched.

Each size is a table ``scale.rows_<size>`` (``id bigint`` primary key, ``done``
boolean, the partial index ``(id) WHERE NOT done`` the pending query pages through);
``_1p`` tables have one row in 100 pending. For each table the script runs
``run_pass`` of a ReconciledJob whose ``pending()`` is ``SELECT id ... WHERE NOT
done`` twice: the first pass enqueues every pending key, the second finds every key
already queued. It prints rows, pending keys, keys/s and seconds of each pass, and the
Redis memory the first pass added (``INFO memory`` ``used_memory`` after minus before,
divided by the keys queued: the payloads, the uniqueness locks, and the scheduled-set
entries when ``--jitter`` is above 0).

Tables are UNLOGGED (the passes only read them; building 32M rows logged doubles the
time on the shared disk); the pending query and its plan are the same.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

SIZES = {"1m": 1_000_000, "5m": 5_000_000, "10m": 10_000_000, "100k": 100_000}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """One ``redis-server`` on a free port, persistence off, stopped by :meth:`stop`
    (only this process is ever stopped: never the shared server)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="reconcile-scale-redis-"))
        self.port = free_port()
        binary = shutil.which("redis-server") or "redis-server"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port, socket_timeout=120)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)

    def cpu_seconds(self) -> float:
        """CPU time the server used so far (user + system)."""
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def own_cpu_seconds() -> float:
    """CPU time of this process so far (all threads: the pass's reader and pushers)."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def timed(server: PrivateRedis, run: Any) -> tuple[Any, float, float, float]:
    """``run()``'s result, wall seconds, and the CPU seconds of this process and of
    Redis during it: on a shared machine CPU time per key is the figure that does not
    move with the other tenants' load (wall time does)."""
    wall, mine, theirs = time.perf_counter(), own_cpu_seconds(), server.cpu_seconds()
    result = run()
    return (result, time.perf_counter() - wall, own_cpu_seconds() - mine,
            server.cpu_seconds() - theirs)


def admin_engine(base: str) -> sa.Engine:
    return sa.create_engine(base, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def database_url(base: str, name: str, schema: str | None = None) -> str:
    u = sa.make_url(base).set(drivername="postgresql+psycopg", database=name)
    out = u.render_as_string(hide_password=False)
    if schema:
        out += ("&" if "?" in out else "?") + f"options=-csearch_path%3D{schema}"
    return out


def ensure_tables(base: str, name: str, tables: list[str]) -> None:
    """Create the database and the missing tables (built once, kept between runs)."""
    with admin_engine(base).connect() as c:
        if not c.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar():
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    eng = sa.create_engine(database_url(base, name), isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(sa.text("CREATE SCHEMA IF NOT EXISTS scale"))
        c.execute(sa.text("CREATE SCHEMA IF NOT EXISTS scale_rc"))  # reconcile's own tables
        for table in tables:
            if c.execute(sa.text("SELECT to_regclass(:t)"), {"t": f"scale.{table}"}).scalar():
                continue
            size = SIZES[table.split("_")[1]]
            done = "g % 100 <> 0" if table.endswith("_1p") else "false"
            t = time.perf_counter()
            c.execute(sa.text(f"CREATE UNLOGGED TABLE scale.{table} "
                              "(id bigint PRIMARY KEY, done boolean NOT NULL)"))
            c.execute(sa.text(f"INSERT INTO scale.{table} SELECT g, {done} "
                              f"FROM generate_series(1, {size}) g"))
            c.execute(sa.text(f"CREATE INDEX ON scale.{table} (id) WHERE NOT done"))
            c.execute(sa.text(f"VACUUM ANALYZE scale.{table}"))
            print(f"built scale.{table} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    eng.dispose()


def job_class_for(table: str, jitter: float) -> type[Any]:
    """A ReconciledJob whose pending query pages through ``scale.<table>``."""
    from reconcile import ReconciledJob

    rows = sa.table(table, sa.column("id", sa.BigInteger), sa.column("done", sa.Boolean), schema="scale")

    class ScaleItem(ReconciledJob):
        name = f"scale.{table}.j{int(jitter)}"
        queue = "scale"
        every = 86400

        def pending(self) -> Select[Any]:
            return sa.select(rows.c.id).where(sa.not_(rows.c.done))

        def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
            raise AssertionError("never performed: the benchmark only runs passes")

    ScaleItem.jitter = jitter
    return ScaleItem


def measure(base: str, name: str, table: str, jitter: float, second: bool) -> dict[str, Any]:
    from reconcile.config import load_settings, use_settings
    from reconcile.scheduler.passes import run_pass
    from reconcile.store.engine import dispose_engines

    server = PrivateRedis()
    try:
        url = database_url(base, name, "scale_rc")
        settings = load_settings({"redis_url": server.url, "namespace": "scale", "database_url": url,
                                  "log_level": "WARNING"}, env={}, pyproject=False)
        use_settings(settings)
        job = job_class_for(table, jitter)
        before = server.used_memory()
        first, dt1, py1, rd1 = timed(server, lambda: run_pass(job, trigger="manual", owner="scale",
                                                              settings=settings))
        if first.error:
            raise RuntimeError(first.error)
        after = server.used_memory()
        n = max(first.found, 1)
        out: dict[str, Any] = {
            "table": table, "jitter": jitter, "pending": first.found, "enqueued": first.enqueued,
            "pass1_seconds": round(dt1, 2), "pass1_keys_s": round(first.found / dt1),
            "pass1_python_cpu_us_per_key": round(py1 / n * 1e6, 2),
            "pass1_redis_cpu_us_per_key": round(rd1 / n * 1e6, 2),
            "redis_bytes_per_key": round((after - before) / max(first.enqueued, 1), 1),
        }
        if second:
            again, dt2, py2, rd2 = timed(server, lambda: run_pass(job, trigger="manual", owner="scale",
                                                                  settings=settings))
            out.update(pass2_seconds=round(dt2, 2), pass2_keys_s=round(again.found / dt2),
                       pass2_already=again.already_queued,
                       pass2_python_cpu_us_per_key=round(py2 / n * 1e6, 2),
                       pass2_redis_cpu_us_per_key=round(rd2 / n * 1e6, 2))
        dispose_engines()
        return out
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pass_scale",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                        help="any database of the server (the script connects to --database)")
    parser.add_argument("--database", default="reconcile_scale", help="database for the tables (kept)")
    parser.add_argument("--tables", default="rows_1m,rows_5m,rows_10m,rows_1m_1p,rows_5m_1p,rows_10m_1p")
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--no-second", action="store_true", help="skip the all-already-queued pass")
    parser.add_argument("--drop", action="store_true", help="drop the database and exit")
    args = parser.parse_args(argv)
    if args.drop:
        with admin_engine(args.database_url).connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)'))
        return
    tables = [t for t in args.tables.split(",") if t]
    ensure_tables(args.database_url, args.database, tables)
    from reconcile.store import migrate

    migrate.upgrade(database_url(args.database_url, args.database, "scale_rc"))
    for table in tables:
        row = measure(args.database_url, args.database, table, args.jitter, not args.no_second)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
