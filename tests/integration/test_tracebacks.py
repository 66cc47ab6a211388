"""Failures keep their traceback: retry and dead records carry a bounded one
(``error_backtrace``, the class's ``backtrace`` option), operators read it with
``reconcile dead show`` and on the dashboard, and logs put the final failure at ERROR
with its traceback, where logging-based trackers such as Sentry pick it up."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import sentry_sdk
from click.testing import CliRunner

from reconcile import Job, death_handlers
from reconcile.broker import Broker, SettleKind, SettleOp
from reconcile.cli import main
from reconcile.config import Settings
from reconcile.web.app import Dashboard
from reconcile.worker.executor import Executor
from reconcile.worker.retry import MAX_BACKTRACE_BYTES


class Boom(Exception):
    pass


def inner_helper(depth: int, message: str) -> None:
    if depth:
        inner_helper(depth - 1, message)
    raise Boom(message)


class Explodes(Job):
    """Fails three calls deep, with a retry left (a retry record)."""

    queue = "tb"
    retry = 5

    def perform(self, message: str) -> None:
        inner_helper(2, message)


class ExplodesOnce(Explodes):
    """No retries: the first failure is final (a dead record)."""

    retry = 0


class QuietFailure(Explodes):
    backtrace = False


class ShortTrace(Explodes):
    backtrace = 2


def fail_once(broker: Broker, settings: Settings, cls: type[Job], message: str = "it broke") -> SettleOp:
    cls.perform_async(message)
    got = broker.exchange("tb-proc", ["tb"], 1)
    assert len(got) == 1
    return Executor(settings, broker).run(got[0])


def record_of(op: SettleOp) -> dict[str, Any]:
    assert op.payload is not None
    return dict(orjson.loads(op.payload))


def test_a_retry_record_keeps_the_traceback_down_to_the_raising_line(
    settings: Settings, broker: Broker,
) -> None:
    op = fail_once(broker, settings, Explodes)
    assert op.kind is SettleKind.RETRY
    trace = record_of(op)["error_backtrace"]
    assert trace.startswith("Traceback (most recent call last):")
    assert "in inner_helper" in trace and "raise Boom(message)" in trace
    assert trace.rstrip().endswith("Boom: it broke")


def test_a_dead_record_keeps_it_too(settings: Settings, broker: Broker) -> None:
    op = fail_once(broker, settings, ExplodesOnce)
    assert op.kind is SettleKind.DEAD
    assert "in inner_helper" in record_of(op)["error_backtrace"]


def test_backtrace_false_keeps_none_and_an_int_keeps_that_many_frames(
    settings: Settings, broker: Broker,
) -> None:
    assert "error_backtrace" not in record_of(fail_once(broker, settings, QuietFailure))
    trace = record_of(fail_once(broker, settings, ShortTrace))["error_backtrace"]
    assert trace.count('  File "') == 2
    assert "in inner_helper" in trace  # the frames nearest the error, not the worker's


def test_a_huge_traceback_is_cut_to_the_byte_limit_keeping_the_error(
    settings: Settings, broker: Broker,
) -> None:
    trace = record_of(fail_once(broker, settings, Explodes, "x" * 50_000))["error_backtrace"]
    assert len(trace.encode()) <= MAX_BACKTRACE_BYTES + 4
    assert trace.startswith("...") and trace.rstrip().endswith("x" * 100)


def test_bad_backtrace_values_are_refused_when_the_class_is_defined() -> None:
    from reconcile.errors import ConfigError

    with pytest.raises(ConfigError, match="backtrace must be True, False or an int >= 0"):
        class Bad(Job):
            backtrace = -3

            def perform(self) -> None: ...


def test_a_retried_failure_logs_one_warning_line_and_a_final_one_an_error_with_its_traceback(
    settings: Settings, broker: Broker, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "reconcile.worker")
    fail_once(broker, settings, Explodes)
    retried = [r for r in caplog.records if r.name == "reconcile.worker"]
    assert [(r.levelname, r.exc_info) for r in retried] == [("WARNING", None)]
    assert "Boom: it broke); retry" in retried[0].getMessage()
    caplog.clear()
    fail_once(broker, settings, ExplodesOnce)
    final = [r for r in caplog.records if r.name == "reconcile.worker"]
    assert [r.levelname for r in final] == ["ERROR"]
    assert final[0].exc_info is not None and isinstance(final[0].exc_info[1], Boom)


def test_the_retry_traceback_level_is_a_setting(
    settings: Settings, broker: Broker, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "reconcile.worker")
    fail_once(broker, settings.with_overrides(retry_traceback_log_level="warning"), Explodes)
    records = [(r.levelname, r.exc_info is not None) for r in caplog.records if r.name == "reconcile.worker"]
    assert records == [("WARNING", False), ("WARNING", True)]


def test_reconcile_dead_show_prints_the_error_and_the_traceback(
    settings: Settings, broker: Broker,
) -> None:
    op = fail_once(broker, settings, ExplodesOnce)
    broker.exchange("tb-proc", ["tb"], 0, [op])  # settle it: into the dead set
    jid = record_of(op)["jid"]
    flags = ["--redis-url", settings.redis_url, "--namespace", settings.namespace]
    out = CliRunner().invoke(main, ["dead", "show", jid, *flags])
    assert out.exit_code == 0, out.output
    assert f"jid {jid}" in out.output
    assert f"error {Boom.__module__}.Boom: it broke" in out.output
    assert "in inner_helper" in out.output
    as_json = CliRunner().invoke(main, ["dead", "show", jid, "--json", *flags])
    assert "in inner_helper" in orjson.loads(as_json.output)["error_backtrace"]
    missing = CliRunner().invoke(main, ["dead", "show", "nosuchjid", *flags])
    assert missing.exit_code == 2
    assert "no job 'nosuchjid' in the dead set" in missing.output


def test_the_dashboard_folds_the_traceback_under_the_error(settings: Settings, broker: Broker) -> None:
    op = fail_once(broker, settings, ExplodesOnce, "<script>alert(1)</script>")
    broker.exchange("tb-proc", ["tb"], 0, [op])
    status: list[str] = []
    body = b"".join(Dashboard(settings)(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/dead", "QUERY_STRING": "", "HTTP_HOST": "localhost",
         "wsgi.input": None, "SERVER_NAME": "localhost", "SERVER_PORT": "80", "wsgi.url_scheme": "http"},
        lambda s, h, *a: status.append(s)))  # type: ignore[arg-type, misc, return-value]
    assert status == ["200 OK"]
    page = body.decode()
    assert "<details><summary>" in page and "in inner_helper" in page
    assert "<script>alert(1)</script>" not in page  # escaped, like every value


@pytest.fixture
def sentry_events() -> Iterator[list[dict[str, Any]]]:
    """The real Sentry SDK, its events kept in memory instead of sent."""
    events: list[dict[str, Any]] = []

    class Keep(sentry_sdk.transport.Transport):
        def capture_envelope(self, envelope: Any) -> None:
            for item in envelope.items:
                if item.type == "event":
                    events.append(item.payload.json)

    sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=Keep, default_integrations=True)
    yield events
    sentry_sdk.init()  # no DSN: the SDK is off again


def test_sentrys_logging_integration_sees_the_final_failure_with_its_traceback(
    settings: Settings, broker: Broker, sentry_events: list[dict[str, Any]],
) -> None:
    fail_once(broker, settings, Explodes)  # retried: a WARNING, not an event
    assert sentry_events == []
    fail_once(broker, settings, ExplodesOnce)
    sentry_sdk.flush()
    assert len(sentry_events) == 1
    exc = sentry_events[0]["exception"]["values"][-1]
    assert exc["type"] == "Boom" and exc["value"] == "it broke"
    assert any(f["function"] == "inner_helper" for f in exc["stacktrace"]["frames"])


def test_a_death_handler_can_report_to_sentry_with_the_job_as_context(
    settings: Settings, broker: Broker, sentry_events: list[dict[str, Any]],
) -> None:
    def report(payload: dict[str, Any], exc: BaseException) -> None:
        # the docs' example (docs/jobs.md, "Error trackers")
        with sentry_sdk.new_scope() as scope:
            scope.set_tag("reconcile.class", payload["class"])
            scope.set_context("job", {"jid": payload["jid"], "args": payload["args"],
                                      "retry_count": payload.get("retry_count")})
            sentry_sdk.capture_exception(exc)

    logging.getLogger("reconcile.worker").disabled = True  # only the handler's event
    death_handlers.append(report)
    try:
        fail_once(broker, settings, ExplodesOnce)
    finally:
        death_handlers.remove(report)
        logging.getLogger("reconcile.worker").disabled = False
    sentry_sdk.flush()
    assert len(sentry_events) == 1
    event = sentry_events[0]
    assert event["tags"]["reconcile.class"] == ExplodesOnce.job_name
    assert event["contexts"]["job"]["args"] == ["it broke"]
