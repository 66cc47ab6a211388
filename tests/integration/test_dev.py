"""``reconcile dev``: a scheduler and a worker in one command, stopped cleanly by Ctrl-C.

Each test runs the real command as a subprocess in a session of its own (so a signal
can go to its whole process group, as a terminal's Ctrl-C does), on the suite's real
Redis and PostgreSQL (``--embedded never``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from reconcile.broker import Broker
from reconcile.config import Settings
from tests.jobs_core import RECONCILE, ROOT, Record, counts, wait_for


@pytest.fixture
def dev(settings: Settings, schema_url: str, engine: sa.Engine, tmp_path: Path
        ) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``reconcile dev --app tests.jobs_core`` in a new session; killed if a test leaves it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE_")}
    env.update(RECONCILE_REDIS_URL=settings.redis_url, RECONCILE_NAMESPACE=settings.namespace,
               RECONCILE_DATABASE_URL=schema_url, RECONCILE_IDLE_WAIT="0.5",
               RECONCILE_POLL_INTERVAL="0.2", RECONCILE_SHUTDOWN_TIMEOUT="5", PYTHONUNBUFFERED="1")
    log = tmp_path / "dev.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*RECONCILE, "dev", "--app", "tests.jobs_core", "--embedded", "never"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    yield proc, log
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _children(log: Path) -> tuple[int, int]:
    m = wait_for(lambda: re.search(rb"scheduler \(pid (\d+)\) and worker \(pid (\d+)\)", log.read_bytes()),
                 timeout=60, what="reconcile dev's start-up line")
    return int(m.group(1)), int(m.group(2))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("how", ["ctrl-c to the process group", "sigterm to reconcile dev alone"])
def test_dev_runs_jobs_and_stops_cleanly(how: str, dev: tuple[subprocess.Popen[bytes], Path],
                                         broker: Broker) -> None:
    proc, log = dev
    scheduler_pid, worker_pid = _children(log)
    tokens = [f"d{i}" for i in range(50)]
    Record.perform_bulk([t] for t in tokens)
    wait_for(lambda: len(counts(broker)) == len(tokens), timeout=60, what="the dev worker ran the jobs")
    assert [int(p["pid"]) for p in broker.processes()] == [worker_pid], "one worker, registered"

    if how.startswith("ctrl-c"):
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text(errors="replace")[-3000:]
    assert _gone(scheduler_pid) and _gone(worker_pid)
    assert broker.processes() == [], "the worker deregistered: a clean shutdown, not a kill"
    assert counts(broker) == dict.fromkeys(tokens, 1), "each job ran once"
    assert "Traceback" not in log.read_text(errors="replace")
