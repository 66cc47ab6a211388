"""Schedulers are visible: each beats into Redis, and ``reconcile status`` (and
``/status.json``) shows every scheduler seen in the last day, alive or dead, beside
the workers, and says so loudly when none is alive."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from reconcile.api import status
from reconcile.broker import Broker
from reconcile.cli import main
from reconcile.config import Settings
from reconcile.scheduler.service import Scheduler
from reconcile.web.app import Dashboard
from tests.reconciled_app import ProcessItem


@pytest.fixture
def engine(app_engine: sa.Engine) -> sa.Engine:
    return app_engine


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def cli_status(settings: Settings) -> str:
    out = CliRunner().invoke(main, ["status", "--redis-url", settings.redis_url,
                                    "--namespace", settings.namespace])
    assert out.exit_code == 0, out.output
    return out.output


def test_a_running_scheduler_is_shown_alive_and_a_stopped_one_is_gone(
    pg_settings: Settings, engine: sa.Engine,
) -> None:
    sched = Scheduler(pg_settings, [ProcessItem])
    runner = threading.Thread(target=sched.run, kwargs={"tick": 0.05})
    runner.start()
    try:
        wait_for(lambda: status(pg_settings)["schedulers_alive"] == 1, 10, "the scheduler's beat")
        [s] = status(pg_settings)["schedulers"]
        assert s["id"] == sched.owner and s["alive"] is True
        assert s["schedules"] == 1 and s["last_beat_ago"] < 6
        assert f"scheduler {sched.owner} alive last beat" in cli_status(pg_settings)
    finally:
        sched.stop()
        runner.join(20)
    assert status(pg_settings)["schedulers"] == []  # a clean stop removes its record


def test_a_scheduler_that_stops_beating_is_shown_dead_and_none_alive_is_said(
    settings: Settings, broker: Broker,
) -> None:
    broker.scheduler_beat("host:1:abc", {"host": "host", "pid": 1, "passes_running": ["A"]}, ttl=0.2)
    assert status(settings)["schedulers_alive"] == 1
    wait_for(lambda: status(settings)["schedulers_alive"] == 0, 5, "the alive key to lapse")
    [s] = status(settings)["schedulers"]
    assert (s["id"], s["alive"], s["passes_running"]) == ("host:1:abc", False, ["A"])
    text = cli_status(settings)
    assert "scheduler host:1:abc DEAD last beat" in text
    assert "no scheduler alive: reconcile passes, cron jobs and Redis-loss healing are stopped" in text


def test_records_not_renewed_for_a_day_are_forgotten(settings: Settings, broker: Broker) -> None:
    old = json.dumps({"host": "gone", "beat": time.time() - 2 * 86_400})
    broker.redis.hset(broker.keys.schedulers, "gone:9:old", old)
    broker.redis.hset(broker.keys.schedulers, "garbled:1:x", b"not json")
    assert {s["id"] for s in status(settings)["schedulers"]} == {"gone:9:old", "garbled:1:x"}
    broker.scheduler_beat("live:2:new", {"host": "live"}, ttl=15)
    assert [s["id"] for s in status(settings)["schedulers"]] == ["live:2:new"]


def test_the_dashboard_and_metrics_show_schedulers(settings: Settings, broker: Broker) -> None:
    def get(path: str) -> str:
        status_line: list[str] = []
        body = b"".join(Dashboard(settings)(
            {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "HTTP_HOST": "localhost",
             "wsgi.input": None, "SERVER_NAME": "localhost", "SERVER_PORT": "80",
             "wsgi.url_scheme": "http"},
            lambda s, h, *a: status_line.append(s)))  # type: ignore[arg-type, misc, return-value]
        assert status_line == ["200 OK"]
        return body.decode()

    assert "No scheduler is alive" in get("/")
    assert "reconcile_schedulers_alive 0" in get("/metrics")
    broker.scheduler_beat("host:7:sch", {"host": "host", "passes_running": []}, ttl=15)
    page = get("/")
    assert "host:7:sch" in page and "No scheduler is alive" not in page
    assert "reconcile_schedulers_alive 1" in get("/metrics")
