"""One fault scenario's world: private servers, real ``reconcile`` processes, the oracle.

:class:`World` owns a database in the private PostgreSQL cluster, a private Redis, a
Redis namespace, and every process it starts (``reconcile scheduler`` and
``reconcile worker``, real subprocesses with the settings passed as ``RECONCILE_*``
variables). It seeds the oracle's due keys, waits on conditions with deadlines (never
fixed sleeps), and measures the figures every scenario reports:

* ``keys_due`` -- keys seeded as needing work;
* ``lost`` -- due keys not done (no effect) once the run has healed: must be 0;
* ``dup_effects`` -- effect rows beyond one per key: must be 0;
* ``dup_exec`` -- ``perform`` calls beyond one per key (allowed, counted);
* time to heal, measured by each scenario from its fault.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
import sqlalchemy as sa

from reconcile.broker import Broker
from reconcile.config import Settings, load_settings
from tests.fault.oracle_app import due, effects, metadata
from tests.fault.servers import PgCluster, RedisServer

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.fault.oracle_app"
WORKER_APP_NAME = "fault-worker"
LEASE = 3.0
"""``lease_seconds`` of every process the suite starts (small, so recovery is fast)."""

SOAK = os.environ.get("RECONCILE_FAULT_SOAK", "") not in ("", "0")
"""Longer runs (more keys, more faults): ``python -m tests.fault.report --soak``."""


class ProcessDied(AssertionError):
    """A process the scenario needs exited on its own."""


@dataclass
class Proc:
    kind: str
    popen: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]
    expect_alive: bool = True

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@dataclass
class Figures:
    keys_due: int
    done: int
    lost: int
    dup_effects: int
    performs: int
    deliveries: int
    dup_exec: int
    per_key_performs: Counter[int] = field(default_factory=Counter, repr=False)


class World:
    """Everything one scenario runs against; :meth:`close` ends all of it."""

    def __init__(self, pg: PgCluster, redis_server: RedisServer, folder: Path,
                 redis_url: str | None = None) -> None:
        """``redis_url`` (default: ``redis_server``'s) is what every process and the
        world's own broker use: a ``redis+sentinel://`` URL for a Sentinel group."""
        self.pg = pg
        self.redis_server = redis_server
        self.redis_url = redis_url or redis_server.url
        self.folder = folder
        self.dbname = "f" + uuid.uuid4().hex[:12]
        self.namespace = "fault" + uuid.uuid4().hex[:6]
        self.logdir = folder / "attempts"
        self.logdir.mkdir(parents=True, exist_ok=True)
        pg.create_database(self.dbname)
        self.url = pg.url(self.dbname)
        self.settings: Settings = load_settings(
            {"redis_url": self.redis_url, "database_url": self.url, "namespace": self.namespace,
             "lease_seconds": LEASE, "poll_interval": 0.5, "idle_wait": 1.0},
            env={}, pyproject=False,
        )
        self.engine = sa.create_engine(self.url, pool_pre_ping=True, pool_size=2,
                                       connect_args={"connect_timeout": 3})
        self.broker = Broker(self.settings)
        self.procs: list[Proc] = []
        self.keys_due = 0

    # -- set-up --------------------------------------------------------------------------

    @property
    def redis(self) -> redis.Redis:
        return self.broker.redis

    def env(self, app_name: str, **extra: Any) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("RECONCILE_", "FAULT_"))}
        base.update(
            RECONCILE_REDIS_URL=self.redis_url,
            RECONCILE_DATABASE_URL=self.pg.url(self.dbname, application_name=app_name),
            RECONCILE_NAMESPACE=self.namespace,
            RECONCILE_LEASE_SECONDS=str(LEASE),
            RECONCILE_POLL_INTERVAL="0.5",
            RECONCILE_IDLE_WAIT="1",
            RECONCILE_DATABASE_CONNECT_TIMEOUT="3",
            RECONCILE_LOG_LEVEL="WARNING",
            FAULT_LOG_DIR=str(self.logdir),
            FAULT_KILLER_DSN=self.pg.dsn(self.dbname),
            PYTHONUNBUFFERED="1",
        )
        base.update({k: str(v) for k, v in extra.items()})
        return base

    def cli(self, *args: str, timeout: float = 120) -> str:
        out = subprocess.run([sys.executable, "-m", "reconcile", *args, "--app", APP],
                             cwd=ROOT, env=self.env("fault-cli"), capture_output=True,
                             timeout=timeout, check=False)
        if out.returncode != 0:
            raise AssertionError(f"reconcile {' '.join(args)} failed: {out.stderr.decode()[-3000:]}")
        return out.stdout.decode()

    def upgrade(self) -> None:
        """``reconcile db upgrade``, then the oracle's tables."""
        self.cli("db", "upgrade")
        metadata.create_all(self.engine)

    def seed(self, n: int, start: int = 1) -> list[int]:
        keys = list(range(start, start + n))
        with self.engine.begin() as c:
            c.execute(sa.text(
                "INSERT INTO fault_due (key) SELECT g FROM "
                "generate_series(CAST(:a AS bigint), CAST(:b AS bigint)) g"
            ), {"a": start, "b": start + n - 1})
        self.keys_due += n
        return keys

    # -- processes -----------------------------------------------------------------------

    def spawn(self, kind: str, *args: str, app_name: str, **env: Any) -> Proc:
        log = self.folder / f"{kind}-{len(self.procs)}.log"
        environ = self.env(app_name, **env)
        with open(log, "ab") as out:
            popen = subprocess.Popen([sys.executable, "-m", "reconcile", kind, "--app", APP, *args],
                                     cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)
        proc = Proc(kind, popen, log, environ)
        self.procs.append(proc)
        return proc

    def worker(self, *args: str, concurrency: int = 4, **env: Any) -> Proc:
        return self.spawn("worker", "-q", "oracle", "-c", str(concurrency), *args,
                          app_name=WORKER_APP_NAME, **env)

    def scheduler(self, **env: Any) -> Proc:
        return self.spawn("scheduler", app_name="fault-scheduler", **env)

    def registered_workers(self) -> dict[int, str]:
        """pid -> proc id of the worker processes registered in Redis."""
        out: dict[int, str] = {}
        for member in self.redis.smembers(self.broker.keys.procs):  # type: ignore[union-attr]
            proc_id = member.decode()
            with contextlib.suppress(IndexError, ValueError):
                out[int(proc_id.split(":")[-2])] = proc_id
        return out

    def wait_registered(self, *procs: Proc, timeout: float = 30) -> dict[int, str]:
        pids = {p.pid for p in procs}
        return self.wait(lambda: pids <= set(self.registered_workers()) and self.registered_workers(),
                         timeout, f"workers {sorted(pids)} registered")

    def stop(self, proc: Proc, sig: int = signal.SIGTERM, timeout: float = 30) -> float:
        """Signal ``proc`` and wait for it to exit; returns the seconds it took."""
        proc.expect_alive = False
        started = time.monotonic()
        if proc.alive():
            proc.popen.send_signal(sig)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(10)
            raise AssertionError(f"{proc.kind} {proc.pid} did not exit within {timeout}s "
                                 f"after signal {sig}:\n{proc.tail()}") from None
        return time.monotonic() - started

    def close(self) -> None:
        for proc in self.procs:
            proc.expect_alive = False
            if proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)  # a frozen process cannot die otherwise
                proc.popen.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(10)
        self.broker.redis.close()
        self.engine.dispose()
        try:
            self.pg.wait_ready(30)
            self.pg.drop_database(self.dbname)
        except Exception:
            pass

    # -- waiting -------------------------------------------------------------------------

    def check_procs(self) -> None:
        for proc in self.procs:
            if proc.expect_alive and not proc.alive():
                raise ProcessDied(f"{proc.kind} {proc.pid} exited with {proc.popen.returncode}:\n"
                                  f"{proc.tail()}")

    def wait(self, cond: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
        """Poll ``cond`` until truthy (returns its value); fail after ``timeout`` seconds,
        or as soon as a process that should be running has died."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = cond()
            except (sa.exc.OperationalError, redis.ConnectionError):
                value = None  # a server the scenario is restarting
            if value:
                return value
            self.check_procs()
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.kind} {p.pid}:\n{p.tail(1500)}" for p in self.procs[-4:])
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")
            time.sleep(interval)

    def timed(self, cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> float:
        """Seconds until ``cond`` holds (see :meth:`wait`)."""
        started = time.monotonic()
        self.wait(cond, timeout, what, interval)
        return time.monotonic() - started

    # -- the oracle ----------------------------------------------------------------------

    def pending(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(sa.select(sa.func.count()).where(due.c.done.is_(False))).scalar() or 0)

    def done(self) -> int:
        return self.keys_due - self.pending()

    def queued(self, queue: str = "oracle") -> int:
        """Jobs in Redis for ``queue``: ready, scheduled, retrying, or leased."""
        k = self.broker.keys
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(k.queue(queue))
        pipe.zcard(k.schedule)
        pipe.zcard(k.retry)
        leases = [key for key in self.redis.scan_iter(match=k.pattern[:-1] + "lease:*", count=1000)]
        for key in leases:
            pipe.hlen(key)
        res = pipe.execute()
        return int(sum(res))

    def attempts(self) -> Counter[tuple[str, str]]:
        """(kind, key) -> count over every process's attempt log."""
        out: Counter[tuple[str, str]] = Counter()
        for path in self.logdir.glob("attempts-*.log"):
            for line in path.read_text().splitlines():
                kind, _, key = line.partition(" ")
                out[(kind, key)] += 1
        return out

    def figures(self, keys: Iterable[int] | None = None) -> Figures:
        with self.engine.connect() as c:
            per_key = dict(c.execute(sa.select(effects.c.key, sa.func.count()).group_by(effects.c.key)).all())
            not_done = set(c.execute(sa.select(due.c.key).where(due.c.done.is_(False))).scalars())
            all_keys = set(c.execute(sa.select(due.c.key)).scalars()) if keys is None else set(keys)
        lost = {k for k in all_keys if k in not_done or per_key.get(k, 0) == 0}
        dup_effects = sum(max(0, n - 1) for n in per_key.values())
        log = self.attempts()
        performs: Counter[int] = Counter()
        deliveries = 0
        for (kind, key), n in log.items():
            if kind == "P":
                performs[int(key)] += n
            elif kind == "D":
                deliveries += n
        total = sum(performs.values())
        return Figures(
            keys_due=len(all_keys), done=len(all_keys) - len(lost), lost=len(lost),
            dup_effects=dup_effects, performs=total, deliveries=deliveries,
            dup_exec=total - len([k for k in performs if k in all_keys]),
            per_key_performs=performs,
        )

    def crashes(self) -> int:
        return sum(n for (kind, _), n in self.attempts().items() if kind == "K")

    def runs(self) -> list[dict[str, Any]]:
        """Rows of ``reconcile_runs``, oldest first."""
        with self.engine.connect() as c:
            rows = c.execute(sa.text("SELECT * FROM reconcile_runs ORDER BY started_at, id")).mappings()
            return [dict(r) for r in rows]


def db_now(world: World) -> Any:
    """The database clock (``reconcile_runs`` times are on it)."""
    with world.engine.connect() as c:
        return c.execute(sa.text("SELECT clock_timestamp()")).scalar_one()


def loss_pass_done(world: World, since: Any) -> bool:
    """A ``redis_loss`` pass started after ``since`` has finished (everything pending
    then is back in Redis)."""
    with world.engine.connect() as c:
        return bool(c.execute(sa.text(
            "SELECT count(*) FROM reconcile_runs WHERE trigger = 'redis_loss' "
            "AND started_at >= :t AND finished_at IS NOT NULL AND error IS NULL"), {"t": since}).scalar())
