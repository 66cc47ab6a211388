"""The benchmark harness's fairness rules (no timing is asserted, no peer is needed).

* every adapter takes its service URLs from the harness (``benchmarks.check``), which
  the harness verifies at the start of every run;
* every worker process runs behind the start gate: nothing of the system runs before
  the driver opens it, and a drain's clock starts at the opening
  (``benchmarks.gate``, ``benchmarks.common.Workers``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from benchmarks import check, common, pg
from benchmarks.systems.base import System
from benchmarks.systems.reconcile_sys import Reconcile

ROOT = Path(__file__).resolve().parents[2]


def _server(redis_url: str) -> str:
    parts = urlsplit(redis_url)
    return f"{parts.scheme}://{parts.netloc}"


def test_check_reports_the_harness_urls_of_adapters_that_need_no_peer() -> None:
    # Nothing listens at these addresses: the check reads the adapters' objects, it
    # does not connect, so a URL the adapter did not take from the harness shows
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_REDIS": "redis://127.0.0.9:6399",
           "BENCH_DATABASE": "postgresql+psycopg://someone@127.0.0.9:5999/elsewhere"}
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--check", "--only", "reconcile,redis,psycopg"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reconcile: worker: --redis-url: redis://127.0.0.9:6399/7" in out.stdout
    assert "redis: driver: redis-py client: redis://127.0.0.9:6399/6" in out.stdout
    assert "someone@127.0.0.9:5999/reconcile_bench_" in out.stdout
    assert "every adapter uses the harness's URLs (3 checked" in out.stdout


class OwnUrls(System):
    """An adapter that connects where it likes, as the arq adapter once did."""

    name = "reconcile"  # borrows reconcile's database number
    pg_schema = pg.PQ_SCHEMA

    def __init__(self, urls: list[tuple[str, str]]) -> None:
        self._urls = urls

    def urls(self) -> list[tuple[str, str]]:
        return self._urls

    def open(self) -> None: ...

    def enqueue_single(self, n: int) -> float:
        return 0.0


def test_check_names_every_url_that_is_not_the_harnesss() -> None:
    good_redis, good_pg = common.url(common.DBS["reconcile"]), pg.conninfo(pg.PQ_SCHEMA)
    assert check.problems([OwnUrls([("driver", good_redis), ("worker", good_pg)])]) == []

    other_db = common.url(common.DBS["reconcile"] + 1)
    other_host = f"redis://elsewhere.invalid:6379/{common.DBS['reconcile']}"
    wrong_schema = pg.conninfo(pg.RAW_SCHEMA)
    bad = check.problems([OwnUrls([("driver", other_db), ("worker", other_host),
                                   ("reconciled worker", wrong_schema)])])
    assert len(bad) == 3
    assert all(line.startswith("reconcile: ") for line in bad)
    assert [line.split(" uses ")[0] for line in bad] == [
        "reconcile: driver", "reconcile: worker", "reconcile: reconciled worker"]


def test_check_refuses_an_adapter_that_reports_no_url() -> None:
    assert check.problems([OwnUrls([])]) == [
        "reconcile: the adapter reports no URL (System.urls)"]


def test_reconcile_adapter_on_another_database_and_schema_reports_them() -> None:
    system = Reconcile(db=5, schema=pg.REF_SCHEMA)
    system.open()
    try:
        assert check.problems([system]) == []
        used = dict(system.urls())
        assert used["worker: --redis-url"] == common.url(5)
        assert "search_path%3Dbench_rc_ref" in used["reconciled worker: --database-url"]
    finally:
        system.close()


TARGET = """
import os, sys, time
import redis
import reconcile
r = redis.Redis.from_url(os.environ["TARGET_URL"])
r.rpush(os.environ["TARGET_KEY"], f"{time.time()!r} {sys.argv[1:]!r}")
"""


def test_workers_run_nothing_of_the_system_before_the_gate_opens(
        redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "BASE_URL", _server(redis_url))
    (tmp_path / "gate_target.py").write_text(textwrap.dedent(TARGET))
    key = f"gate-test:{uuid.uuid4().hex}"
    r = redis.Redis.from_url(redis_url)
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "BENCH_REDIS": _server(redis_url),
           "TARGET_URL": redis_url, "TARGET_KEY": key}
    workers = common.Workers([[sys.executable, "-m", "gate_target", "--flag", "x"]] * 2, env,
                             tmp_path / "workers.log", preload=("reconcile.config",))
    try:
        deadline = time.monotonic() + 60
        while common.control().llen(f"ready:{workers.run}") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # both are ready and waiting: the command must not have started
        assert r.llen(key) == 0, "the command ran before the gate opened"
        opened = workers.release()
        got = [r.blpop([key], timeout=30) for _ in range(2)]
    finally:
        workers.stop()
        r.delete(key)
    assert all(g is not None for g in got), (tmp_path / "workers.log").read_text()
    for g in got:
        assert g is not None
        started, argv = g[1].decode().split(" ", 1)
        assert float(started) >= opened
        assert argv == "['--flag', 'x']"
    assert len(workers.ready) == 2
    for ready in workers.ready:
        assert Path(ready["modules"]["reconcile"]).resolve() == ROOT / "reconcile" / "__init__.py"
        assert isinstance(ready["pid"], int)
    assert json.dumps(workers.ready)  # what the driver logs is plain JSON


def test_against_runs_the_refs_reconcile_in_its_agent_not_this_trees() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--check", "--against", "HEAD",
                          "--only", "reconcile"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("  reconcile@HEAD: commit "))
    used = Path(line.split(" reconcile from ")[1].split(" (driver side")[0])
    assert used.name == "__init__.py" and used.parent.name == "reconcile"
    assert not used.resolve().is_relative_to(ROOT)  # the extracted ref, not this checkout
    assert "reconcile@HEAD: worker: --redis-url: " in out.stdout
    assert "every adapter uses the harness's URLs (2 checked" in out.stdout
    assert not used.parent.exists()  # the extracted tree is removed at the end
    # old and new are driven the same way: the baseline also runs in its own agent,
    # with this checkout's reconcile, and its tree is not removed
    here = next(x for x in out.stdout.splitlines() if x.startswith("  reconcile: this working tree"))
    mine = Path(here.split(" reconcile from ")[1].split(" (driver side")[0])
    assert mine.resolve() == (ROOT / "reconcile" / "__init__.py").resolve()
    assert mine.exists()
