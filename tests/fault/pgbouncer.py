"""A private PgBouncer for the fault suite, in front of the suite's private PostgreSQL.

:class:`PgBouncer` writes its own ``pgbouncer.ini`` and ``users.txt`` in a temporary
folder and runs Debian's ``pgbouncer`` (``apt-get install pgbouncer``; ``.ci/run``
installs it when missing) on a free port, routing every database name to the
:class:`~tests.fault.servers.PgCluster` it is given. Only this object ever stops or
restarts that process. Defaults: ``pool_mode = transaction``, ``auth_type = trust``,
``default_pool_size = 20`` server connections per (database, user), no Unix socket.

PgBouncer refuses to run as root: as root the process runs as the ``postgres`` user
(``runuser``), like the cluster's own commands.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.fault.servers import PgCluster, _deadline_loop, free_port

BINARY_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/bin")


def pgbouncer_binary() -> str | None:
    """Path of the ``pgbouncer`` executable, or None if it is not installed."""
    for folder in BINARY_DIRS:
        path = Path(folder) / "pgbouncer"
        if path.exists():
            return str(path)
    return shutil.which("pgbouncer")


class PgBouncer:
    """One private ``pgbouncer`` process in front of ``pg``."""

    def __init__(self, pg: PgCluster, pool_mode: str = "transaction", pool_size: int = 20,
                 extra: dict[str, str] | None = None) -> None:
        binary = pgbouncer_binary()
        if binary is None:
            raise RuntimeError("pgbouncer is not installed (apt-get install pgbouncer)")
        self.binary = binary
        self.pg = pg
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.extra = extra or {}
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="rc-fault-pgb-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            pw = pwd.getpwnam("postgres")
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)

    @property
    def log_path(self) -> Path:
        return self.folder / "pgbouncer.log"

    def url(self, dbname: str, **params: str) -> str:
        """A SQLAlchemy URL of ``dbname`` through this PgBouncer."""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql+psycopg://{self.pg.user}@127.0.0.1:{self.port}/{dbname}" + (
            f"?{query}" if query else "")

    def dsn(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.pg.user} dbname={dbname}"

    def _write_config(self) -> Path:
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.folder / "users.txt"),
            "pool_mode": self.pool_mode,
            "default_pool_size": str(self.pool_size),
            "max_client_conn": "1000",
            "logfile": str(self.log_path),
            "pidfile": str(self.folder / "pgbouncer.pid"),
            "admin_users": self.pg.user,
            "server_login_retry": "1",
            **self.extra,
        }
        ini = self.folder / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.pg.port}\n\n"
            "[pgbouncer]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        (self.folder / "users.txt").write_text(f'"{self.pg.user}" ""\n')
        if self._as:
            pw = pwd.getpwnam("postgres")
            for path in (ini, self.folder / "users.txt"):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        return ini

    def start(self) -> None:
        ini = self._write_config()
        self.starts += 1
        self.proc = subprocess.Popen([*self._as, self.binary, str(ini)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in _deadline_loop(15, f"pgbouncer on port {self.port}", 0.05):
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=2,
                                     prepare_threshold=None) as c:
                    c.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                pass

    def kill(self) -> None:
        """SIGKILL: every client and server connection it held is cut at once."""
        if self.proc is not None and self.proc.poll() is None:
            # runuser forwards no SIGKILL: signal pgbouncer itself, found by its pidfile
            pid = self._pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            else:
                self.proc.kill()
            self.proc.wait(10)

    def _pid(self) -> int | None:
        try:
            return int((self.folder / "pgbouncer.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def restart(self) -> None:
        """SIGKILL, then a new process on the same port (its pools start empty)."""
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""
