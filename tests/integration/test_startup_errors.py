"""Start-up failures: every command ends with ONE line naming the server and the setting,
exit code 2, no traceback unless ``--debug``; passwords never appear; long-running
processes wait for a server that is not there yet; planned flushes and new namespaces
are not INCIDENTs; ``run`` and ``flush`` print each pass once.

Real servers throughout: a free port nobody listens on, a private ``redis-server``
with a password, a PostgreSQL database and a role that do not exist.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from reconcile.config import Settings
from reconcile.scheduler.service import Scheduler
from tests.reconciled_app import ProcessItem, items

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cret-Zq9"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reconcile(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m reconcile ARGS`` with only ``env`` as RECONCILE_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE_")}
    return subprocess.run([sys.executable, "-m", "reconcile", *args], env=clean | env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[int]:
    """A private redis-server on a free port requiring the password ``x``."""
    server = shutil.which("redis-server")
    assert server, "redis-server is needed for this test"
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--requirepass", "x", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, password="x")
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "private redis-server did not start"
                time.sleep(0.05)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def assert_one_clean_line(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("reconcile: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert SECRET not in result.stdout + result.stderr


def test_unreachable_redis_is_one_line_naming_server_and_source(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://:{SECRET}@127.0.0.1:{port}/0"
    result = reconcile(["status"], {"RECONCILE_REDIS_URL": url}, tmp_path)
    assert_one_clean_line(result, f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0",
                          "RECONCILE_REDIS_URL", "Connection refused")


def test_debug_flag_shows_the_traceback_without_the_password(tmp_path: Path) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    result = reconcile(["--debug", "status"], {"RECONCILE_REDIS_URL": url}, tmp_path)
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "ConnectionError" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("reconcile: cannot reach Redis")
    assert SECRET not in result.stdout + result.stderr


def test_unknown_redis_host(tmp_path: Path) -> None:
    result = reconcile(["dead", "list", "--redis-url", f"redis://:{SECRET}@nohost.invalid:6379/0"],
                       {}, tmp_path)
    assert_one_clean_line(result, "cannot reach Redis at redis://:***@nohost.invalid:6379/0",
                          "command line")


def test_wrong_redis_password(tmp_path: Path, password_redis: int) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{password_redis}/0"
    result = reconcile(["status"], {"RECONCILE_REDIS_URL": url}, tmp_path)
    assert_one_clean_line(result, "refused the credentials", f"127.0.0.1:{password_redis}")


def test_tls_to_a_plain_port_fails_in_one_line(tmp_path: Path, password_redis: int) -> None:
    url = f"rediss://:{SECRET}@127.0.0.1:{password_redis}/0"
    result = reconcile(["status"], {"RECONCILE_REDIS_URL": url}, tmp_path, timeout=90)
    assert_one_clean_line(result, "TLS connection to Redis at rediss://:***@")


def test_missing_database_and_wrong_user(tmp_path: Path, database_url: str, settings: Settings) -> None:
    base = sa.engine.make_url(database_url)
    missing = base.set(database="no_such_db_x", password=SECRET)
    result = reconcile(["runs"], {"RECONCILE_DATABASE_URL": missing.render_as_string(hide_password=False)},
                       tmp_path)
    assert_one_clean_line(result, "PostgreSQL at", ":***@", "no_such_db_x", "does not exist",
                          "RECONCILE_DATABASE_URL")
    nobody = base.set(username="no_such_role_x", password=SECRET)
    result = reconcile(["quarantine", "list", "--database-url",
                        nobody.render_as_string(hide_password=False)], {}, tmp_path)
    assert_one_clean_line(result, "refused the connection", "no_such_role_x", "command line")


def test_unreachable_postgres(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:{free_port()}/test"
    result = reconcile(["db", "current"], {"RECONCILE_DATABASE_URL": url}, tmp_path)
    assert_one_clean_line(result, "cannot reach PostgreSQL at postgresql+psycopg://postgres:***@",
                          "Connection refused")


def test_bad_setting_is_one_line_with_exit_code_2(tmp_path: Path) -> None:
    result = reconcile(["status"], {"RECONCILE_REDIS_URL": f"http://u:{SECRET}@h/0"}, tmp_path)
    assert_one_clean_line(result, "'redis_url'", "RECONCILE_REDIS_URL", "redis://, rediss://, unix://",
                          "http://u:***@h/0")


def test_worker_waits_for_redis_at_start_and_says_so(tmp_path: Path) -> None:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconcile", "worker", "-q", "default"],
        env=clean | {"RECONCILE_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:{port}/0"},
        cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # blocks until the worker says what it waits for
        assert "is waiting for Redis at redis://:***@127.0.0.1" in line, line
        assert "Connection refused" in line and "RECONCILE_REDIS_URL" in line
        assert proc.poll() is None, "the worker waits instead of exiting"
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=20)[1]
        assert proc.returncode == 0
        assert SECRET not in line + rest and "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_worker_exits_at_once_on_a_wrong_password(tmp_path: Path, password_redis: int) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{password_redis}/0"
    result = reconcile(["worker"], {"RECONCILE_REDIS_URL": url}, tmp_path)
    assert_one_clean_line(result, "refused the credentials")


def test_scheduler_exits_at_once_on_a_missing_database(
    tmp_path: Path, redis_url: str, database_url: str, namespace: str
) -> None:
    missing = sa.engine.make_url(database_url).set(database="no_such_db_x", password=SECRET)
    result = reconcile(["scheduler"], {
        "RECONCILE_REDIS_URL": redis_url, "RECONCILE_NAMESPACE": namespace,
        "RECONCILE_DATABASE_URL": missing.render_as_string(hide_password=False)}, tmp_path)
    assert_one_clean_line(result, "no_such_db_x", "does not exist")


# -- logging: planned flush and new namespace are not incidents ---------------------------


def test_first_start_on_a_new_namespace_is_info_not_incident(
    pg_settings: Settings, app_engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = Scheduler(pg_settings, [ProcessItem])
    with caplog.at_level(logging.INFO, logger="reconcile.scheduler"):
        scheduler.run_once()
    assert scheduler.incidents == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("is new" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


def test_namespace_lost_while_no_scheduler_ran_is_an_incident(
    pg_settings: Settings, app_engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    from reconcile.broker import get_broker

    Scheduler(pg_settings, [ProcessItem]).run_once()  # a pass ran: Redis held our data
    get_broker(pg_settings).flush_namespace()  # lost (epoch too) while no scheduler runs
    later = Scheduler(pg_settings, [ProcessItem])
    with caplog.at_level(logging.INFO, logger="reconcile.scheduler"):
        later.run_once()
    assert later.incidents and "epoch" in later.incidents[0]
    assert any(r.levelno == logging.ERROR and "INCIDENT" in r.getMessage() for r in caplog.records)


def _app_env(s: Settings) -> dict[str, str]:
    return {"RECONCILE_DATABASE_URL": s.database_url, "RECONCILE_REDIS_URL": s.redis_url,
            "RECONCILE_NAMESPACE": s.namespace}


def test_run_and_flush_print_each_pass_once_and_flush_is_no_incident(
    pg_settings: Settings, app_engine: sa.Engine
) -> None:
    with app_engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, 11)])
    env = _app_env(pg_settings)
    # a scheduler running meanwhile must not see the planned flush as a loss
    watcher = Scheduler(pg_settings, [ProcessItem])
    watcher.run_once()
    ran = reconcile(["run", "ProcessItem", "--app", "tests.reconciled_app"], env, REPO)
    assert ran.returncode == 0, ran.stderr
    assert (ran.stdout + ran.stderr).count("ProcessItem: found 10") == 1, (ran.stdout, ran.stderr)
    flushed = reconcile(["flush", "--yes", "--app", "tests.reconciled_app"], env, REPO)
    assert flushed.returncode == 0, flushed.stderr
    out = flushed.stdout + flushed.stderr
    assert out.count("pass tests.reconciled_app.ProcessItem: found 10") == 1, out
    assert "INCIDENT" not in out and " ERROR " not in out
    assert "INFO" in flushed.stderr and "flushed by an operator" in flushed.stderr
    assert watcher.check_redis() is None and watcher.incidents == []
