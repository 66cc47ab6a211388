"""Start-up banners and per-job audit lines (issue 13, item 2): a worker's and a
scheduler's first record says which version, Redis (password masked), namespace,
database, queues and weights, concurrency, app modules and job classes it uses;
``log_job_lines`` adds a start and a done line per job; and the running job's fields
reach the log calls an ``async def perform`` makes, as they reach a sync one's."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from reconcile import Job
from reconcile.banner import banner_fields, banner_text
from reconcile.broker import Broker
from reconcile.config import Settings
from reconcile.logs import JsonFormatter
from reconcile.worker import Worker, parse_queue
from reconcile.worker.executor import Executor

app_log = logging.getLogger("app.audit")


class Audited(Job):
    queue = "audit"
    retry = 1

    def perform(self, n: int) -> None:
        if n < 0:
            raise ValueError("negative")


class AsyncLogs(Job):
    queue = "audit"

    async def perform(self, n: int) -> None:
        app_log.info("async perform of %d", n)


def records_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


class JsonLines(logging.Handler):
    """The JSON lines of a logger, formatted when written (in the writing thread and
    context, as a worker's handler does)."""

    def __init__(self, logger: str) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []
        self.logger = logging.getLogger(logger)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))

    def __enter__(self) -> JsonLines:
        self.logger.addHandler(self)
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)


def test_the_worker_banner_names_what_the_worker_uses(
    settings: Settings, broker: Broker, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "reconcile.banner")
    w = Worker(settings.with_overrides(concurrency=2), [parse_queue("audit,3"), parse_queue("low")])
    w.start()
    try:
        [record] = records_of(caplog, "reconcile.banner")
    finally:
        w.stop(timeout=5)
    fields: dict[str, Any] = record.banner  # type: ignore[attr-defined]
    assert fields["role"] == "worker" and fields["process"] == w.proc_id
    assert fields["queues"] == {"audit": 3, "low": 1} and fields["order"] == "weighted"
    assert fields["concurrency"] == 2 and fields["namespace"] == settings.namespace
    assert Audited.job_name in fields["classes"] and __name__ in fields["app_modules"]
    text = record.getMessage()
    assert text.splitlines()[0].startswith(f"reconcile {fields['version']} worker {w.proc_id}")
    assert "  queues       audit:3, low:1" in text and "  concurrency  2" in text
    line = json.loads(JsonFormatter().format(record))  # json mode: one object
    assert line["banner"] == json.loads(json.dumps(fields)) and "\n" not in line["msg"]


def test_the_banner_masks_passwords_and_names_the_schedulers_classes(settings: Settings) -> None:
    s = settings.with_overrides(redis_url="redis://:hunter2@redis.internal:6380/1",
                                database_url="postgresql+psycopg://app:s3cret@db.internal/shop")
    fields = banner_fields("scheduler", "sched-1", s, schedules=["shop.jobs.ShipOrder"])
    text = banner_text(fields)
    assert "hunter2" not in text and "s3cret" not in text
    assert fields["redis"] == "redis://:***@redis.internal:6380/1"
    assert fields["database"] == "postgresql+psycopg://app:***@db.internal/shop"
    assert "  schedules    shop.jobs.ShipOrder" in text


def test_job_lines_say_start_and_done_with_outcome_and_duration(
    settings: Settings, broker: Broker, caplog: pytest.LogCaptureFixture,
) -> None:
    on = settings.with_overrides(log_job_lines=True)
    executor = Executor(on, broker)
    ok, bad = Audited.perform_async(1), Audited.perform_async(-1)
    with JsonLines("reconcile.job") as log:
        for d in broker.exchange("p", ["audit"], 2):
            broker.settle("p", [executor.run(d)])
    assert [line["msg"].split()[0] for line in log.lines] == ["start", "done", "start", "done"]
    done = [line for line in log.lines if line["msg"].startswith("done")]
    assert [(d["jid"], d["outcome"]) for d in done] == [(ok, "done"), (bad, "retry")]
    assert all(d["class"] == Audited.job_name and d["queue"] == "audit" and d["attempt"] == 1
               and d["duration_ms"] >= 0 for d in done)


def test_job_lines_are_off_by_default(
    settings: Settings, broker: Broker, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "reconcile.job")
    Audited.perform_async(2)
    (d,) = broker.exchange("p", ["audit"], 1)
    Executor(settings, broker).run(d)
    assert records_of(caplog, "reconcile.job") == []


def test_an_async_performs_own_log_lines_carry_the_job(
    settings: Settings, broker: Broker, caplog: pytest.LogCaptureFixture,
) -> None:
    jid = AsyncLogs.perform_async(5)
    (d,) = broker.exchange("p", ["audit"], 1)
    with JsonLines("app.audit") as log:
        Executor(settings, broker).run(d)
    [line] = log.lines
    assert line["thread"] == "reconcile-asyncio"  # written on the event loop's thread
    assert (line["jid"], line["class"], line["attempt"]) == (jid, AsyncLogs.job_name, 1)
