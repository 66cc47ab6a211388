"""OpenTelemetry tracing (the ``otel`` extra, setting ``tracing = "otel"``): spans for
enqueue, perform and pass, linked through the payload's ``traceparent``.

Specifications, on the real SDK (an in-memory span exporter), real worker threads,
real passes on PostgreSQL and Redis: an enqueue makes one PRODUCER span whose context
every payload of the call carries; a worker's ``perform`` span is its child, with the
job's attributes and outcome; a failure records its exception; a pass makes one span
whose context every key it enqueues carries, on the fast path still; a malformed
``traceparent`` is ignored; with tracing off nothing is traced and no payload changes,
and the core runs without ``opentelemetry`` installed.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy.sql import Select

from reconcile import Job, ReconciledJob, client, client_middleware, registry
from reconcile.broker import Broker, PushRecord
from reconcile.broker.pass_push import PassPusher
from reconcile.config import Settings, use_settings
from reconcile.scheduler.passes import run_pass
from tests.jobs_core import ROOT, counts, everything, record, running_worker, wait_for
from tests.reconciled_app import ProcessItem, items

EXPORTER = InMemorySpanExporter()
TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def _install_provider() -> None:
    """The process's global SDK provider, exporting to EXPORTER (set once per process,
    as OpenTelemetry allows; added to a provider another module set first)."""
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        current = TracerProvider()
        trace.set_tracer_provider(current)
    if not getattr(current, "_reconcile_test_exporter", False):
        current.add_span_processor(SimpleSpanProcessor(EXPORTER))
        current._reconcile_test_exporter = True  # type: ignore[attr-defined]


_install_provider()
tracer = trace.get_tracer("tests.tracing")


# -- jobs ------------------------------------------------------------------------------


class Traced(Job):
    """Records its token, inside a span of its own (the application's)."""

    name = "trace.Traced"

    def perform(self, token: str) -> None:
        with tracer.start_as_current_span("app work"):
            record(token)


class FailsOnce(Job):
    """Fails its first attempt, then succeeds; retried at once."""

    name = "trace.FailsOnce"
    retry = 3

    def perform(self, token: str) -> None:
        if "retry_count" not in self.payload:
            raise ValueError(f"first attempt of {token}")
        record(token)

    def retry_in(self, count: int, exc: BaseException) -> float:
        return 0.0


class AlwaysFails(Job):
    name = "trace.AlwaysFails"
    retry = 0

    def perform(self, token: str) -> None:
        raise RuntimeError(f"no luck for {token}")


class AsyncTraced(Job):
    """An ``async def perform`` that makes a span of its own inside the coroutine."""

    name = "trace.AsyncTraced"

    async def perform(self, token: str) -> None:
        with tracer.start_as_current_span("app async work"):
            await asyncio.sleep(0)
            record(token)


class AsyncStuck(Job):
    name = "trace.AsyncStuck"
    retry = 0
    timeout = 0.3

    async def perform(self) -> None:
        await asyncio.sleep(30)


class BrokenPending(ReconciledJob):
    """A pass of it fails: its pending() cannot be built."""

    every = 3600
    queue = "items"

    def pending(self) -> Select[Any]:
        raise RuntimeError("pending() is broken")

    def perform(self, session: Any, item_id: int) -> None:
        pass


# Registered only while a test of this module runs (a pass or flush elsewhere runs
# every registered ReconciledJob).
registry.unregister(BrokenPending.job_name)


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


@pytest.fixture
def traced(settings: Settings) -> Settings:
    """This test's settings with ``tracing = "otel"``, installed as the process's."""
    s = settings.with_overrides(tracing="otel")
    use_settings(s)
    return s


@pytest.fixture
def traced_pg(pg_settings: Settings, app_engine: sa.Engine) -> Settings:
    s = pg_settings.with_overrides(tracing="otel")
    use_settings(s)
    return s


@pytest.fixture
def no_client_middleware() -> Iterator[None]:
    saved = client_middleware.items
    client_middleware.clear()
    yield
    client_middleware.clear()
    for mw in saved:
        client_middleware.add(mw)


def finished(prefix: str) -> list[ReadableSpan]:
    return [s for s in EXPORTER.get_finished_spans() if s.name.startswith(prefix)]


def wait_spans(prefix: str, n: int, timeout: float = 10.0) -> list[ReadableSpan]:
    return wait_for(lambda: len(finished(prefix)) >= n and finished(prefix), timeout=timeout,
                    what=f"{n} finished {prefix!r} spans")


def traceparent_of(span: ReadableSpan) -> str:
    ctx = span.get_span_context()
    assert ctx is not None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    ctx = span.get_span_context()
    assert ctx is not None
    return ctx.span_id


def trace_id(span: ReadableSpan) -> int:
    ctx = span.get_span_context()
    assert ctx is not None
    return ctx.trace_id


def payloads(broker: Broker) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in everything(broker)]


def seed(engine: sa.Engine, n: int) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, n + 1)])


def done_items(engine: sa.Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).where(items.c.done.is_(True))).scalar() or 0)


def counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """Count calls of ``owner.name`` (which still runs): a spy, not a stand-in."""
    calls: list[int] = []
    real: Callable[..., Any] = getattr(owner, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


# -- enqueue ---------------------------------------------------------------------------------


def test_an_enqueue_makes_a_producer_span_whose_context_the_payload_carries(
    traced: Settings, broker: Broker
) -> None:
    with tracer.start_as_current_span("request") as request:
        jid = Traced.perform_async("a")
    (span,) = finished("enqueue")
    assert span.name == "enqueue trace.Traced"
    assert span.kind is SpanKind.PRODUCER
    assert parent_id(span) == request.get_span_context().span_id, "a child of the caller's span"
    assert span.attributes is not None
    assert dict(span.attributes) == {
        "messaging.system": "reconcile", "messaging.operation.type": "send",
        "reconcile.class": "trace.Traced", "reconcile.queue": "default", "reconcile.count": 1,
        "reconcile.enqueued": 1, "reconcile.jid": jid,
    }
    (payload,) = payloads(broker)
    assert payload["traceparent"] == traceparent_of(span)
    assert TRACEPARENT.fullmatch(payload["traceparent"])


def test_a_bulk_enqueue_is_one_span_and_every_payload_carries_its_context(
    traced: Settings, broker: Broker
) -> None:
    Traced.perform_bulk([[str(i)] for i in range(5)])
    Traced.perform_in(60, "later")
    bulk, later = finished("enqueue")
    assert bulk.attributes is not None and later.attributes is not None
    assert (bulk.attributes["reconcile.count"], bulk.attributes["reconcile.enqueued"]) == (5, 5)
    assert "reconcile.jid" not in bulk.attributes, "a bulk call has no one jid"
    stamps = [p["traceparent"] for p in payloads(broker)]
    assert sorted(stamps) == sorted([traceparent_of(bulk)] * 5 + [traceparent_of(later)])
    scheduled = [orjson.loads(m) for m, _ in broker.set_entries("scheduled", 0, -1)]
    assert [p["traceparent"] for p in scheduled] == [traceparent_of(later)]


def test_an_enqueue_that_fails_records_its_error(traced: Settings, broker: Broker) -> None:
    with pytest.raises(Exception, match="JSON-native"):
        Traced.perform_async(object())
    (span,) = finished("enqueue")
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]
    assert everything(broker) == []


# -- perform ---------------------------------------------------------------------------------


def test_a_perform_span_is_the_child_of_its_enqueue_span(traced: Settings, broker: Broker) -> None:
    with tracer.start_as_current_span("request"):
        jid = Traced.perform_async("a")
    (enqueue,) = finished("enqueue")
    with running_worker(traced):
        (perform,) = wait_spans("perform", 1)
    assert perform.name == "perform trace.Traced"
    assert perform.kind is SpanKind.CONSUMER
    assert trace_id(perform) == trace_id(enqueue) and parent_id(perform) == span_id(enqueue)
    assert perform.parent is not None and perform.parent.is_remote, "linked through the payload"
    assert perform.attributes is not None
    assert {k: perform.attributes[k] for k in (
        "reconcile.jid", "reconcile.class", "reconcile.queue", "reconcile.attempt", "reconcile.outcome",
        "messaging.system", "messaging.operation.type")} == {
        "reconcile.jid": jid, "reconcile.class": "trace.Traced", "reconcile.queue": "default",
        "reconcile.attempt": 1, "reconcile.outcome": "done", "messaging.system": "reconcile",
        "messaging.operation.type": "process"}
    assert "reconcile.key" not in perform.attributes, "a plain Job has no key"
    assert perform.status.status_code is StatusCode.UNSET
    (work,) = finished("app work")
    assert parent_id(work) == span_id(perform), "the perform span is current while perform runs"
    assert counts(broker) == {"a": 1}


def test_a_failed_attempt_records_its_exception_and_the_retry_stays_in_the_trace(
    traced: Settings, broker: Broker
) -> None:
    FailsOnce.perform_async("f")
    AlwaysFails.perform_async("d")
    (first_enqueue, dead_enqueue) = finished("enqueue")
    with running_worker(traced):
        wait_spans("perform", 3)
    attempts = sorted(finished("perform trace.FailsOnce"),
                      key=lambda s: s.attributes["reconcile.attempt"] if s.attributes else 0)
    assert [(s.attributes or {}).get("reconcile.attempt") for s in attempts] == [1, 2]
    failed, succeeded = attempts
    assert (failed.attributes or {})["reconcile.outcome"] == "retry"
    assert failed.status.status_code is StatusCode.ERROR
    assert "first attempt of f" in (failed.status.description or "")
    (event,) = failed.events
    assert event.name == "exception" and event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert "first attempt of f" in str(event.attributes["exception.stacktrace"])
    assert (succeeded.attributes or {})["reconcile.outcome"] == "done"
    assert succeeded.status.status_code is StatusCode.UNSET
    assert {parent_id(failed), parent_id(succeeded)} == {span_id(first_enqueue)}, \
        "the retried payload keeps its traceparent"
    (dead,) = finished("perform trace.AlwaysFails")
    assert (dead.attributes or {})["reconcile.outcome"] == "dead"
    assert dead.status.status_code is StatusCode.ERROR
    assert parent_id(dead) == span_id(dead_enqueue)
    assert counts(broker) == {"f": 1}


def test_an_async_job_gets_the_same_perform_span_current_inside_its_coroutine(
    traced: Settings, broker: Broker
) -> None:
    AsyncTraced.perform_async("x")
    AsyncStuck.perform_async()
    (enqueue, _) = finished("enqueue")
    with running_worker(traced, concurrency=2):
        wait_spans("perform", 2)
    (perform,) = finished("perform trace.AsyncTraced")
    assert parent_id(perform) == span_id(enqueue)
    assert (perform.attributes or {})["reconcile.outcome"] == "done"
    (work,) = finished("app async work")
    assert parent_id(work) == span_id(perform), "the coroutine runs in the perform span's context"
    (stuck,) = finished("perform trace.AsyncStuck")
    assert (stuck.attributes or {})["reconcile.outcome"] == "timed_out"
    assert stuck.status.status_code is StatusCode.ERROR
    assert "exceeded its timeout of 0.3 s" in (stuck.status.description or "")
    assert counts(broker) == {"x": 1}


@pytest.mark.parametrize("bad", [
    "garbage", 42, None, ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"],
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero span id
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff is invalid
    "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",  # upper case is not W3C
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",     # no flags
    "\u2028" * 100_000,
], ids=lambda v: repr(v)[:40])
def test_a_malformed_traceparent_is_ignored_and_the_job_runs(traced: Settings, broker: Broker,
                                                             bad: Any) -> None:
    payload = {"queue": "default", "jid": "ab" * 12, "class": "trace.Traced", "args": ["m"],
               "created_at": 1.0, "retry": 0, "traceparent": bad, "enqueued_at": 1.0}
    broker.push([PushRecord("default", 0.0, "", 0, orjson.dumps(payload))])
    with running_worker(traced):
        (perform,) = wait_spans("perform", 1)
    assert perform.parent is None, "a root span: the bad context is not used"
    assert (perform.attributes or {})["reconcile.outcome"] == "done"
    assert counts(broker) == {"m": 1}
    assert broker.set_entries("dead", 0, -1) == [], "never a reason to dead-letter the job"


# -- passes ----------------------------------------------------------------------------------


def test_a_pass_span_is_the_parent_of_its_keys_perform_spans_on_the_fast_path(
    traced_pg: Settings, app_engine: sa.Engine, broker: Broker, monkeypatch: pytest.MonkeyPatch,
    no_client_middleware: None,
) -> None:
    seed(app_engine, 30)
    fast_pushes = counting(monkeypatch, PassPusher, "push")
    enqueue_calls = counting(monkeypatch, client, "enqueue")
    result = run_pass(ProcessItem, settings=traced_pg)
    assert result.error is None and result.enqueued == 30
    assert fast_pushes and enqueue_calls == [], "the pass stayed on its fast path"
    (span,) = finished("pass")
    assert span.name == "pass " + ProcessItem.job_name and span.kind is SpanKind.PRODUCER
    assert span.attributes is not None
    assert {k: span.attributes[k] for k in (
        "reconcile.class", "reconcile.trigger", "reconcile.found", "reconcile.enqueued",
        "reconcile.already_queued", "reconcile.quarantined", "reconcile.deferred",
        "reconcile.disabled")} == {
        "reconcile.class": ProcessItem.job_name, "reconcile.trigger": "manual", "reconcile.found": 30,
        "reconcile.enqueued": 30, "reconcile.already_queued": 0, "reconcile.quarantined": 0,
        "reconcile.deferred": 0, "reconcile.disabled": False}
    assert span.attributes["reconcile.duration_seconds"] == pytest.approx(result.seconds)
    assert {p["traceparent"] for p in payloads(broker)} == {traceparent_of(span)}, \
        "one traceparent per pass, in every key's payload"
    assert finished("enqueue") == []

    again = run_pass(ProcessItem, settings=traced_pg)
    (_, second) = finished("pass")
    assert (second.attributes or {})["reconcile.already_queued"] == again.already_queued == 30

    with running_worker(traced_pg, ("items",), concurrency=4):
        performs = wait_spans("perform", 30)
    assert {parent_id(p) for p in performs} == {span_id(span)}
    assert {trace_id(p) for p in performs} == {trace_id(span)}
    keys = sorted(orjson.loads(str((p.attributes or {})["reconcile.key"])) for p in performs)
    assert keys == [[i] for i in range(1, 31)]
    assert {(p.attributes or {})["reconcile.outcome"] for p in performs} == {"done"}


def test_a_pass_through_client_middleware_keeps_its_keys_in_the_pass_trace(
    traced_pg: Settings, app_engine: sa.Engine, broker: Broker, no_client_middleware: None,
) -> None:
    """The slow path (client middleware installed): each chunk's enqueue span, made on
    a pusher thread, is a child of the pass span, and the keys carry it."""
    seed(app_engine, 5)
    client_middleware.add(lambda job_class, payload, call_next: call_next(payload))
    result = run_pass(ProcessItem, settings=traced_pg)
    assert result.enqueued == 5
    (span,) = finished("pass")
    (enqueue,) = finished("enqueue")
    assert parent_id(enqueue) == span_id(span) and trace_id(enqueue) == trace_id(span)
    assert {p["traceparent"] for p in payloads(broker)} == {traceparent_of(enqueue)}


def test_a_failing_pass_records_its_error_on_its_span(traced_pg: Settings, app_engine: sa.Engine) -> None:
    registry.register(BrokenPending)
    try:
        result = run_pass(BrokenPending, settings=traced_pg)
    finally:
        registry.unregister(BrokenPending.job_name)
    assert result.error == "RuntimeError: pending() is broken"
    (span,) = finished("pass")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == result.error
    assert [e.name for e in span.events] == ["exception"]


# -- tracing off -----------------------------------------------------------------------------


def test_with_tracing_off_nothing_is_traced_and_no_payload_changes(
    pg_settings: Settings, app_engine: sa.Engine, broker: Broker, no_client_middleware: None,
) -> None:
    """A provider is configured (this module's), but the setting is off (the default)."""
    assert pg_settings.tracing == "off"
    seed(app_engine, 3)
    with tracer.start_as_current_span("request"):
        Traced.perform_async("a")
        Traced.perform_bulk([["b"], ["c"]])
    run_pass(ProcessItem, settings=pg_settings)
    assert not any("traceparent" in p for p in payloads(broker))
    with running_worker(pg_settings, ("default", "items")):
        wait_for(lambda: len(counts(broker)) == 3 and done_items(app_engine) == 3, what="the jobs")
    made = EXPORTER.get_finished_spans()
    assert [s for s in made if s.instrumentation_scope and s.instrumentation_scope.name == "reconcile"] == []
    assert sorted(s.name for s in made) == ["app work"] * 3 + ["request"], "only the app's own spans"
    assert all(s.parent is None for s in made if s.name == "app work"), "no context travelled"


def test_the_core_runs_without_opentelemetry_and_tracing_on_names_the_missing_extra(
    settings: Settings,
) -> None:
    """In a process where ``opentelemetry`` cannot be imported: enqueue, a worker run
    and settings all work with tracing off, and ``tracing = "otel"`` is refused with
    the extra to install."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
        from reconcile.config import load_settings, use_settings
        from reconcile.errors import ConfigError
        from tests.jobs_core import Record, counts, running_worker, wait_for
        from reconcile.broker import get_broker
        s = load_settings({{"redis_url": {settings.redis_url!r}, "namespace": {settings.namespace!r} + "x",
                           "idle_wait": 0.2, "poll_interval": 0.2}}, env={{}}, pyproject=False)
        use_settings(s)
        Record.perform_async("no-otel")
        with running_worker(s):
            wait_for(lambda: counts(get_broker(s)) == {{"no-otel": 1}}, what="the job")
        get_broker(s).flush_namespace()
        try:
            s.with_overrides(tracing="otel")
        except ConfigError as exc:
            print("refused:", exc)
        print("otel imported:", any(m.startswith("opentelemetry") and sys.modules[m] is not None
                                    for m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "refused: setting 'tracing' (from code) needs the otel extra" in out.stdout
    assert "pip install 'reconcile-jobs[otel]'" in out.stdout
    assert "otel imported: False" in out.stdout


def test_tracing_on_without_a_configured_provider_stamps_nothing(settings: Settings) -> None:
    """The API alone (no SDK provider set, as in a process that never configured one):
    spans are invalid, so no payload carries a ``traceparent``, and jobs run."""
    script = textwrap.dedent(f"""
        from reconcile.config import load_settings, use_settings
        from tests.jobs_core import Record, counts, everything, running_worker, wait_for
        from reconcile.broker import get_broker
        s = load_settings({{"redis_url": {settings.redis_url!r}, "namespace": {settings.namespace!r} + "p",
                           "idle_wait": 0.2, "poll_interval": 0.2, "tracing": "otel"}},
                          env={{}}, pyproject=False)
        use_settings(s)
        Record.perform_async("no-provider")
        print("traceparent in payload:", b"traceparent" in everything(get_broker(s))[0])
        with running_worker(s):
            wait_for(lambda: counts(get_broker(s)) == {{"no-provider": 1}}, what="the job")
        get_broker(s).flush_namespace()
        print("ran")
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["traceparent in payload: False", "ran"]


def test_a_tracing_value_other_than_off_or_otel_is_refused(settings: Settings) -> None:
    from reconcile.errors import ConfigError

    with pytest.raises(ConfigError, match=r"setting 'tracing' .* must be off or otel, got 'zipkin'"):
        settings.with_overrides(tracing="zipkin")
