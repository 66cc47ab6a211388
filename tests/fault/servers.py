"""Private servers for the fault suite: a ``redis-server`` and a PostgreSQL cluster.

Each lives on a free port with its files in a temporary folder, and only these
objects ever stop, kill or restart them: the machine's own Redis and PostgreSQL
(which other test suites use) are never touched.

* :class:`RedisServer` -- ``--save "" --appendonly no``, so a restart comes back
  empty; optional ``maxmemory`` and policy. ``kill()`` is SIGKILL, ``restart()``
  starts a fresh, empty process on the same port.
* :class:`PgCluster` -- ``initdb`` (trust auth) + ``pg_ctl`` with ``fsync=off``.
  ``crash()`` is ``pg_ctl stop -m immediate`` (no shutdown checkpoint: the restart
  runs crash recovery), ``terminate(...)`` calls ``pg_terminate_backend``.
  PostgreSQL refuses to run as root: when the tests run as root, the server
  commands run as the ``postgres`` user (``runuser``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import redis

PG_BIN_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin",
               "/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str:
    for folder in PG_BIN_DIRS:
        path = Path(folder) / name
        if path.exists():
            return str(path)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found (looked in {', '.join(PG_BIN_DIRS)} and PATH)")
    return found


def _deadline_loop(timeout: float, what: str, interval: float = 0.02):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        yield
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def spawn_redis(args: list[str], log_path: Path, what: str, client: redis.Redis) -> subprocess.Popen[bytes]:
    """Start ``args`` (a ``redis-server``, or one with ``--sentinel``) logging to
    ``log_path``, and wait up to 10 s until ``client`` gets a PONG; raises with the log's
    tail if the process exits first. ``client`` is closed afterwards."""
    log = open(log_path, "ab")  # noqa: SIM115
    try:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()
    try:
        for _ in _deadline_loop(10, what):
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited: {log_path.read_text()[-2000:]}")
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                pass
    finally:
        client.close()
    return proc


class RedisServer:
    """One private ``redis-server`` process."""

    def __init__(self, folder: Path, maxmemory: str | None = None,
                 policy: str = "noeviction", extra: tuple[str, ...] = ()) -> None:
        self.folder = folder
        self.port = free_port()
        self.maxmemory = maxmemory
        self.policy = policy
        self.extra = extra  # more redis-server arguments (--replicaof ... of a Sentinel group)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=30)

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.folder),
                "--daemonize", "no", "--protected-mode", "no", "--maxclients", "2000",
                "--maxmemory-policy", self.policy]
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory]
        args += self.extra
        self.folder.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.proc = spawn_redis(args, self.folder / "redis.log", f"redis-server on port {self.port}",
                                self.client())

    def kill(self) -> None:
        """SIGKILL: everything in memory is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        """A fresh, empty server on the same port (new ``run_id``)."""
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()


class PgCluster:
    """A private PostgreSQL cluster (``initdb`` into a temporary folder)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or Path(tempfile.mkdtemp(prefix="rc-fault-pg-"))
        self.data = self.folder / "data"
        # Unix sockets want a short path; keep it beside the data, chowned the same.
        self.sockets = Path(tempfile.mkdtemp(prefix="rcpg-", dir="/tmp"))
        self.port = free_port()
        self.user = "postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            pw = pwd.getpwnam("postgres")
            for path in (self.folder, self.sockets):
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str, timeout: float = 120) -> None:
        out = subprocess.run([*self._as, *args], capture_output=True, timeout=timeout, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({out.returncode}): "
                               f"{out.stdout.decode()[-2000:]} {out.stderr.decode()[-2000:]}")

    def init(self) -> None:
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user,
                  "--no-sync", "-E", "UTF8", "--locale=C")

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "
                "-c shared_buffers=64MB")
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-o", opts,
                  "-l", str(self.folder / "postgres.log"), "-w", "-t", "60", "start")

    def crash(self) -> None:
        """``pg_ctl stop -m immediate``: every backend dies at once, no checkpoint."""
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        try:
            self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60)
        except Exception:
            self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            shutil.rmtree(self.sockets, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={dbname}"

    def url(self, dbname: str, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{dbname}" + (
            f"?{query}" if query else "")

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=5)

    def create_database(self, name: str) -> None:
        with self.connect() as c:
            c.execute(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        with self.connect() as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def wait_ready(self, timeout: float = 30) -> None:
        for _ in _deadline_loop(timeout, "PostgreSQL to accept connections", 0.05):
            try:
                self.connect().close()
                return
            except psycopg.OperationalError:
                pass

    def terminate(self, dbname: str, application_name: str, states: tuple[str, ...] = (),
                  limit: int | None = None) -> int:
        """``pg_terminate_backend`` of backends of ``application_name`` in ``dbname``,
        optionally only in ``states`` (``'active'``, ``'idle in transaction'``), at most
        ``limit`` of them chosen at random. Returns how many were terminated."""
        sql = ("SELECT pg_terminate_backend(pid) FROM (SELECT pid FROM pg_stat_activity "
               "WHERE datname = %s AND application_name = %s AND pid <> pg_backend_pid()")
        params: list[object] = [dbname, application_name]
        if states:
            sql += " AND state = ANY(%s)"
            params.append(list(states))
        sql += " ORDER BY random()"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)
        sql += ") t"
        with self.connect() as c:
            return sum(1 for (ok,) in c.execute(sql, params) if ok)
