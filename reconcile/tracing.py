"""OpenTelemetry tracing (the ``otel`` extra): spans for enqueue, perform and pass,
linked through a ``traceparent`` field in the payload.

Switched by the setting ``tracing``: ``"off"`` (the default: nothing here runs, no
payload carries a ``traceparent``, ``opentelemetry`` is never imported) or ``"otel"``.
The choice is explicit rather than automatic when a TracerProvider is configured: a
provider may be set after reconcile first enqueues, or for other libraries' sake, and
whether payloads grow by a ~70-byte field should not depend on import order.

With ``"otel"``, spans go to the process's global TracerProvider (configure the
OpenTelemetry SDK in the application, or run under ``opentelemetry-instrument``);
without one the API's no-op provider makes every span invalid and no payload carries a
``traceparent``. Spans (names are ``<operation> <job class>``, low-cardinality):

* ``enqueue <class>`` (kind PRODUCER), one per enqueue call (``perform_async``,
  ``perform_in``, ``perform_at``, ``perform_bulk``, ``set(...)``): attributes
  ``reconcile.class``, ``reconcile.queue``, ``reconcile.count`` (jobs asked),
  ``reconcile.enqueued`` (jobs written), ``reconcile.jid`` for a single job. Every
  payload of the call carries its context as ``traceparent`` (W3C, version 00);
* ``pass <class>`` (kind PRODUCER), one per reconcile pass: ``reconcile.class``,
  ``reconcile.trigger``, ``reconcile.found``, ``reconcile.enqueued``,
  ``reconcile.already_queued``, ``reconcile.quarantined``, ``reconcile.deferred``,
  ``reconcile.disabled``, ``reconcile.duration_seconds``; status ERROR with the pass's
  error. Every key the pass enqueues carries the pass span's context: one
  ``traceparent`` per pass, written into the pass's payload template, so the pass stays
  on its fast path (:mod:`reconcile.scheduler.fast_pass`);
* ``perform <class>`` (kind CONSUMER), one per delivery that reaches ``perform``, in
  sync and ``async def`` jobs alike, a child of the span in the payload's
  ``traceparent`` (a root span when there is none or it is malformed: ignored, never a
  failure): ``reconcile.jid``, ``reconcile.class``, ``reconcile.queue``,
  ``reconcile.attempt`` (1 for the first run), ``reconcile.key`` (a ReconciledJob's
  key, as JSON), ``reconcile.outcome`` (:func:`outcome_of`); a failure records its
  exception and sets status ERROR. The span is current while ``perform`` runs, so the
  application's own spans, and the enqueues its jobs make, are its children.

Each span also carries the messaging conventions' ``messaging.system`` (``reconcile``)
and ``messaging.operation.type`` (``send`` / ``process``), so that backends file them
as messaging spans; the other attributes are not doubled under semantic-convention
names (each attribute costs the SDK about a microsecond per span).

The hooks at each site are one call; nothing here raises into the engine for a bad
payload: a ``traceparent`` that is not a string or does not parse is ignored.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from .broker.settle import SettleKind
from .outcome import Outcome

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from .broker.settle import SettleOp
    from .config import Settings
    from .job import Job
    from .jobclass import JobClass
    from .scheduler.passes import PassResult

OTEL = "otel"
"""The value of the setting ``tracing`` that turns tracing on (the other is ``"off"``)."""

TRACEPARENT = "traceparent"
"""The payload field holding the enqueuing span's W3C trace context."""

SYSTEM = "reconcile"


def enabled(settings: Settings) -> bool:
    """Whether ``settings`` turn tracing on (the check every hook site makes first)."""
    return settings.tracing == OTEL


class _Otel:
    """The OpenTelemetry API objects, imported on first use (only with ``tracing =
    "otel"``): the core never imports ``opentelemetry``."""

    def __init__(self) -> None:
        from opentelemetry import context, trace
        from opentelemetry.context import Context
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from . import __version__

        self.trace, self.context = trace, context
        # a ProxyTracer until the application sets a provider, then the provider's
        self.tracer: Tracer = trace.get_tracer("reconcile", __version__)
        self.propagator: TraceContextTextMapPropagator = TraceContextTextMapPropagator()
        self.empty: Callable[[], Context] = Context
        self.producer, self.consumer = SpanKind.PRODUCER, SpanKind.CONSUMER
        self.status, self.error = Status, StatusCode.ERROR


_api: _Otel | None = None
_api_lock = threading.Lock()


def _otel() -> _Otel:
    global _api
    api = _api
    if api is None:
        with _api_lock:
            if _api is None:
                _api = _Otel()
            api = _api
    return api


def traceparent_of(span: Span) -> str | None:
    """``span``'s context as a W3C ``traceparent`` (``00-<trace id>-<span id>-<flags>``),
    or None for an invalid span (no provider configured)."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_traceparent(settings: Settings) -> str | None:
    """The current span's ``traceparent``; None when tracing is off or no span is
    current. A pass's payload template takes it (the pass span is current then)."""
    if not enabled(settings):
        return None
    return traceparent_of(_otel().trace.get_current_span())


def parent_context(value: Any) -> Context:
    """The context a ``perform`` span starts in: the remote span of ``value`` (a
    payload's ``traceparent``), or an empty context (a root span) when ``value`` is
    missing, not a string or not a valid ``traceparent``."""
    if type(value) is not str or len(value) > MAX_TRACEPARENT:
        return _otel().empty()
    return _extract(value)


MAX_TRACEPARENT = 512
"""Longer values are not parsed (a version-00 ``traceparent`` is 55 characters; later
versions may append fields)."""


@functools.lru_cache(maxsize=1024)
def _extract(value: str) -> Context:
    # Cached: the keys of one pass share one traceparent, so a worker draining them
    # parses it once (contexts are immutable, so sharing one is safe).
    api = _otel()
    empty = api.empty()
    try:
        return api.propagator.extract({TRACEPARENT: value}, context=empty)
    except Exception:  # a malformed value must not fail the delivery
        return empty


def record_exception(settings: Settings, exc: BaseException) -> None:
    """Record ``exc`` on the current span with status ERROR (a job's failure inside
    its ``perform`` span, a pass's error inside its ``pass`` span)."""
    if not enabled(settings):
        return
    api = _otel()
    span = api.trace.get_current_span()
    if span.is_recording():
        span.record_exception(exc)
        span.set_status(api.status(api.error, f"{type(exc).__name__}: {exc}"[:1000]))


# -- enqueue ---------------------------------------------------------------------------


def traced_enqueue(job_class: JobClass, queue: Any, count: int,
                   run: Callable[[str | None], list[str | None]]) -> list[str | None]:
    """``run(traceparent)`` (the enqueue call) inside an ``enqueue`` span; ``queue``
    as the call resolved it (an invalid one fails inside ``run``)."""
    api = _otel()
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM, "messaging.operation.type": "send",
        "reconcile.class": job_class.job_name, "reconcile.queue": str(queue), "reconcile.count": count,
    }
    with api.tracer.start_as_current_span(f"enqueue {job_class.job_name}", kind=api.producer,
                                          attributes=attributes) as span:
        jids = run(traceparent_of(span))
        span.set_attribute("reconcile.enqueued", sum(1 for j in jids if j is not None))
        if count == 1 and jids[0] is not None:
            span.set_attribute("reconcile.jid", jids[0])
        return jids


def carry_context(task: Callable[[], Any]) -> Callable[[], Any]:
    """``task`` bound to the caller's context (contextvars, the current span among
    them), for a task another thread runs: a pass's slow-path chunks are enqueued by
    its pusher threads, and their ``enqueue`` spans belong under the pass span."""
    ctx = contextvars.copy_context()
    return lambda: ctx.run(task)


# -- pass ------------------------------------------------------------------------------


class PassTrace:
    """The ``pass`` span of one pass, current from :func:`start_pass` to :meth:`end`
    (the pass's thread: its payload template takes the span's ``traceparent``)."""

    def __init__(self, span: Span, token: contextvars.Token[Context]) -> None:
        self.span, self.token = span, token

    def failed(self, exc: BaseException) -> None:
        """The pass failed with ``exc`` (recorded as an exception event)."""
        self.span.record_exception(exc)

    def end(self, result: PassResult) -> None:
        """End the span with the pass's counts as attributes, status ERROR for an error."""
        api = _otel()
        span = self.span
        span.set_attributes({
            "reconcile.found": result.found, "reconcile.enqueued": result.enqueued,
            "reconcile.already_queued": result.already_queued,
            "reconcile.quarantined": result.quarantined, "reconcile.deferred": result.deferred,
            "reconcile.disabled": result.disabled, "reconcile.duration_seconds": result.seconds,
        })
        if result.error:
            span.set_status(api.status(api.error, result.error[:1000]))
        api.context.detach(self.token)
        span.end()


class _NoPass:
    """:func:`start_pass` with tracing off."""

    def failed(self, exc: BaseException) -> None:
        pass

    def end(self, result: PassResult) -> None:
        pass


_NO_PASS = _NoPass()


def start_pass(settings: Settings, name: str, trigger: str) -> PassTrace | _NoPass:
    """Start the ``pass`` span of a pass of class ``name`` and make it current; the
    pass calls :meth:`PassTrace.end` when it has its counts (it never raises between)."""
    if not enabled(settings):
        return _NO_PASS
    api = _otel()
    attributes = {"messaging.system": SYSTEM, "messaging.operation.type": "send",
                  "reconcile.class": name, "reconcile.trigger": trigger}
    span = api.tracer.start_span(f"pass {name}", kind=api.producer, attributes=attributes)
    return PassTrace(span, api.context.attach(api.trace.set_span_in_context(span)))


# -- perform ---------------------------------------------------------------------------


def attempt_of(payload: dict[str, Any]) -> int:
    """1 for a job's first run, 2 for its first retry... (``retry_count`` is stamped
    at the first failure, as 0)."""
    count = payload.get("retry_count")
    return int(count) + 2 if type(count) is int else 1


def outcome_of(op: SettleOp, outcome: Outcome, timed_out: bool) -> str:
    """``reconcile.outcome`` of a delivery settled by ``op`` after ``perform`` came to
    ``outcome``: an :class:`~reconcile.outcome.Outcome` value (``done``,
    ``already_done``, ``lock_busy``, ``db_unavailable``, ``disabled``, ``held``) or,
    for a failure, the retry rules' verdict (``retry``, ``dead``, ``discard``), or
    ``timed_out`` (given up by the watchdog, which settled it)."""
    if timed_out:
        return "timed_out"
    kind = op.kind
    if kind is SettleKind.ACK:
        return Outcome.DONE.value
    if kind is SettleKind.RETRY:
        return "retry"
    if kind is SettleKind.DEAD:
        return "dead"
    if kind is SettleKind.DROP:
        return outcome.value if outcome in (Outcome.ALREADY_DONE, Outcome.DISABLED) else "discard"
    return outcome.value  # re-scheduled: lock_busy, db_unavailable, held


def traced_perform(queue: str, job_class: type[Job], payload: dict[str, Any],
                   run: Callable[[], SettleOp], outcome: Callable[[], Outcome],
                   timed_out: Callable[[], bool]) -> SettleOp:
    """``run()`` (the delivery's perform and settlement) inside a ``perform`` span,
    child of the payload's ``traceparent``. ``outcome`` and ``timed_out`` are read
    after ``run`` to name the outcome (:func:`outcome_of`). A failure's exception and
    status are recorded by the executor inside ``run`` (:func:`record_exception`); a
    delivery the watchdog gave up gets status ERROR here."""
    api = _otel()
    name = job_class.job_name
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM, "messaging.operation.type": "process",
        "reconcile.jid": str(payload.get("jid")), "reconcile.class": name, "reconcile.queue": queue,
        "reconcile.attempt": attempt_of(payload),
    }
    if job_class.keyed:
        attributes["reconcile.key"] = orjson.dumps(payload.get("args")).decode()
    span = api.tracer.start_span(f"perform {name}", context=parent_context(payload.get(TRACEPARENT)),
                                 kind=api.consumer, attributes=attributes)
    with api.trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        op = run()
        came_to = outcome_of(op, outcome(), timed_out())
        span.set_attribute("reconcile.outcome", came_to)
        if came_to == "timed_out":
            span.set_status(api.status(api.error, f"{name} exceeded its timeout of {job_class.timeout} s"))
        return op
