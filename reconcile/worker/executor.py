"""Run one leased delivery and say how to settle it.

``Executor.run(delivery)`` never raises (short of the interpreter dying): every
outcome (:class:`~reconcile.outcome.Outcome`) becomes one
:class:`~reconcile.broker.SettleOp`, built by its named constructor:

====================  =========================================================
outcome               settlement
====================  =========================================================
performed             ack (releases a ``unique_until="success"`` lock)
already done          drop, counted ``already_done`` (ReconciledJob step 2)
lock busy elsewhere   reschedule in ``LOCK_BUSY_DELAY`` s, counted ``lock_busy``
database connection   reschedule in a few seconds, counted ``db_unavailable``
lost (ReconciledJob)  (no retry spent: PostgreSQL restarting or the backend killed)
class disabled        drop (ReconciledJob, re-derived after enabling)
plain class disabled  reschedule, held: re-scheduled ``HOLD_DELAY`` s later, counted ``held``
skipped by middleware ack
failed                retry / dead / drop (discard), see :mod:`.retry`
malformed payload     dead with an ``InvalidPayload`` record and the reason
unknown class, arity  dead, payload kept, reason in ``error_message``
====================  =========================================================

The rows that do not involve an exception are one pure function,
:func:`settlement_of`; the failure rows go through :func:`.retry.decide`. Every
re-schedule and retry is a delay, which ``fetch.lua`` adds to the Redis server's
clock: no run-at is computed from this host's clock.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import redis

from .. import middleware, registry, tracing
from ..broker import Delivery, SettleKind, SettleOp
from ..config import Settings
from ..errors import InvalidKey, JobTimeout, PayloadError, UnknownJobClass
from ..logs import job_context, job_fields, safe
from ..observe import enabled as metrics_enabled
from ..outcome import RESCHEDULED, Outcome
from ..payload import UNBOUNDED, decode, dumps, expand_pass_payload
from ..store.engine import get_engine
from ..store.pending import terminate_backend
from .held import HeldJobs
from .retry import decide, error_name, run_death_hooks

if TYPE_CHECKING:
    from ..broker import Broker
    from ..job import Job
    from ..observe.metrics import JobMetrics

log = logging.getLogger("reconcile.worker")
job_log = logging.getLogger("reconcile.job")  # the per-job audit lines (log_job_lines)

LOCK_BUSY_DELAY = (1.0, 3.0)
"""Seconds (uniform range) before a delivery whose key lock is held elsewhere runs again."""

UNKNOWN_CLASS = "-"
"""The ``class`` label of a dead delivery whose class is not registered or unreadable."""

FAILURE_OUTCOMES = {"retry": "retry", "dead": "dead", "discard": "discarded"}
"""The ``outcome`` label of ``reconcile_jobs_total`` for each retry verdict."""

HOLD_DELAY = 30.0
"""Seconds before a held job (its plain Job class is disabled) is looked at again."""


def settlement_of(
    outcome: Outcome, field: bytes, lock: str, payload: Callable[[], bytes], jid: str = "",
) -> SettleOp:
    """The settlement of a delivery that ended in ``outcome`` without raising: the
    outcome-to-settlement table above, as one pure function (``tests/unit`` checks each
    row).

    ``payload`` is called only for the outcomes that keep the job (re-scheduled or
    held), so the common ``DONE`` path never serialises. A re-schedule's ``delay``
    counts from when Redis applies it, on Redis's clock. ``FAILED`` and
    ``NOT_CONVERGED`` are settled by the retry rules (:func:`.retry.decide`), not
    here: passing them raises ``ValueError``.
    """
    if outcome is Outcome.DONE:
        return SettleOp.ack(field, lock, jid)
    if outcome in RESCHEDULED:
        return SettleOp.reschedule(field, random.uniform(*LOCK_BUSY_DELAY), payload())
    if outcome is Outcome.HELD:
        return SettleOp.reschedule(field, HOLD_DELAY, payload())
    if outcome in (Outcome.ALREADY_DONE, Outcome.DISABLED):
        return SettleOp.drop(field, lock, jid)
    raise ValueError(f"{outcome.value!r} is settled by the retry rules, not by settlement_of")


def audit_outcome(op: SettleOp | None, outcome: Outcome | None) -> str:
    """The ``outcome`` of a job's done line (``log_job_lines``): ``retry`` or ``dead``
    for a failure, ``discarded`` for a failure dropped by its retry rules, else the
    outcome of the delivery (``done``, ``already_done``, ``lock_busy``...); ``error``
    when the engine itself failed."""
    if op is None:
        return "error"
    if op.kind is SettleKind.RETRY:
        return "retry"
    if op.kind is SettleKind.DEAD:
        return "dead"
    return outcome.value if outcome is not None else "discarded"


class Active(NamedTuple):
    """A delivery running under a timeout."""

    delivery: Delivery
    cls: type[Job]
    job: Job
    payload: dict[str, Any]
    deadline: float


class Executor:
    """Turns deliveries into settlements; shared by a process's worker threads."""

    def __init__(self, settings: Settings, broker: Broker) -> None:
        self.settings = settings
        self.broker = broker
        self.held = HeldJobs(broker, settings.switch_cache_seconds)
        # read once, not per job: the per-job audit lines (log_job_lines) and the
        # "perform" span (tracing) are off in the common case
        self.lines = settings.log_job_lines
        self.tracing = tracing.enabled(settings)
        # Deliveries running under a timeout, by lease field: added and removed by their
        # executor thread, removed by the watchdog's give_up; a removal is done under
        # _settling, so exactly one of the two settles the delivery.
        self.active: dict[bytes, Active] = {}
        # Given up by the watchdog (added under _settling); their result is void. Their
        # executor thread reads and discards the field (runner.py) once perform returns.
        self.abandoned: set[bytes] = set()
        self._settling = threading.Lock()
        # Outcome counts: added by executor threads and the watchdog, taken by the
        # heartbeat; guarded by _count_lock.
        self.counts: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        # Prometheus job counters (observe/metrics.py); None when metrics are off, so
        # a worker without them pays one ``is None`` test per job
        self.metrics: JobMetrics | None = None
        if metrics_enabled(settings):
            from ..observe.metrics import JobMetrics  # deferred: prometheus_client

            self.metrics = JobMetrics()

    def count(self, name: str, n: int = 1) -> None:
        with self._count_lock:
            self.counts[name] += n

    def take_counts(self) -> dict[str, int]:
        """Counters since the last call (flushed to Redis by the heartbeat)."""
        with self._count_lock:
            out = dict(self.counts)
            self.counts.clear()
        return out

    def run(self, d: Delivery) -> SettleOp:
        try:
            return self._run(d)
        except Exception as exc:
            # A bug or an outage inside the engine's own handling (not the job's
            # perform): never lose the executor thread, keep the job in the dead set.
            log.exception("internal error handling a job from queue %s", safe(d.queue))
            return self._invalid(d, f"internal error handling the job: {error_name(exc)}: {exc}")

    def _run(self, d: Delivery) -> SettleOp:
        try:
            payload = decode(d.raw, self.settings.max_payload_bytes)
        except PayloadError as exc:
            return self._invalid(d, str(exc))
        try:
            cls = registry.resolve(payload["class"])
        except UnknownJobClass as exc:
            return self._reject(d, payload, "UnknownJobClass", str(exc))
        # a compact pass payload: its lock, unique_until and timestamps are implied
        expand_pass_payload(payload, cls.unique_until)
        args: list[Any] = payload["args"]
        lo, hi, _ = cls.arity()
        if not lo <= len(args) <= hi:
            want = f"{lo}" if lo == hi else f"{lo} to {'any' if hi >= UNBOUNDED else hi}"
            return self._reject(
                d, payload, "ArgumentError",
                f"{cls.__name__}.perform takes {want} arguments, the payload has {len(args)}",
            )
        if cls.keyed:
            # A payload in Redis may be crafted or old: its key takes the canonical form
            # here, so the lock, the re-check, perform, the idempotency key and any
            # quarantine entry all see one identity per row.
            try:
                args = cls.canonical_args(args)
            except InvalidKey as exc:
                # no identity to quarantine under: dead with the reason, nothing else
                return self._reject(d, payload, "InvalidKey", str(exc), death_hooks=False)
            except Exception as exc:  # pending() itself failed to build: a failure
                return self._failed(d, cls, None, payload, exc)
            payload["args"] = args
        return self._perform(d, cls, payload, args)

    # -- the normal path -------------------------------------------------------------

    def _perform(self, d: Delivery, cls: type[Job], payload: dict[str, Any], args: list[Any]) -> SettleOp:
        lock: str = payload.get("lock", "")
        if cls.injected_params == 0 and self.held.is_held(cls.job_name):
            # A disabled plain Job is held, not dropped: nothing re-derives it later.
            self.count(Outcome.HELD)
            if self.metrics is not None:
                self.metrics.record(cls.job_name, d.queue, Outcome.HELD.value, None)
            return settlement_of(Outcome.HELD, d.field, lock, lambda: d.raw)
        try:
            job = cls()
            job.jid = payload["jid"]
            job.payload = payload
            if lock and payload.get("unique_until") == "start":
                try:
                    self.broker.release_lock(lock)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    # Redis, not the job (unreachable after the client's retries, or
                    # mid-failover): back to its queue, nothing ran, no retry spent
                    log.warning("%s jid=%s: cannot release its uniqueness lock (%s); pushed "
                                "back to its queue", cls.job_name, safe(str(payload.get("jid"))), exc)
                    return SettleOp.push_back(d.field, d.queue, d.raw)
                lock = ""
        except Exception as exc:  # a constructor that raises, Redis down: a failure
            return self._failed(d, cls, None, payload, exc)
        outcome = Outcome.DONE
        finished = False  # perform returned (rather than raised)

        def perform() -> None:
            nonlocal outcome, finished
            outcome = job.execute(args)
            finished = True

        if cls.timeout:
            self.active[d.field] = Active(d, cls, job, payload, time.monotonic() + float(cls.timeout))
        # the job's fields for every log record written while it runs (structured logs)
        context_value = (d.queue, payload, cls.keyed)
        context = job_context.set(context_value)
        lines = self.lines
        started, attempt = 0.0, 0
        if lines:
            started = time.monotonic()
            # a failure stamps the payload's retry count before the done line: keep this run's
            attempt = job_fields(context_value)["attempt"]
        op: SettleOp | None = None
        try:
            if lines:
                job_log.info("start %s jid=%s", cls.job_name, safe(payload["jid"]))
            if self.tracing:  # the "perform" span around it (reconcile.tracing)
                op = tracing.traced_perform(d.queue, cls, payload, lambda: self._execute(
                    d, cls, job, payload, perform, lock, lambda: outcome), lambda: outcome,
                    lambda: d.field in self.abandoned)
            else:
                op = self._execute(d, cls, job, payload, perform, lock, lambda: outcome)
            return op
        finally:
            if lines:
                ended = audit_outcome(op, outcome if finished else None)
                ms = round((time.monotonic() - started) * 1000, 3)
                job_log.info("done %s jid=%s %s in %.1f ms", cls.job_name, safe(payload["jid"]), ended, ms,
                             extra={"outcome": ended, "duration_ms": ms, "attempt": attempt})
            job_context.reset(context)
            with self._settling:  # the watchdog and this thread agree on who settles
                self.active.pop(d.field, None)

    def _execute(
        self, d: Delivery, cls: type[Job], job: Job, payload: dict[str, Any],
        perform: Callable[[], None], lock: str, outcome_of: Callable[[], Outcome],
    ) -> SettleOp:
        metrics = self.metrics
        started = time.perf_counter() if metrics is not None else 0.0
        try:
            chain = middleware.server_middleware.items
            if chain:
                middleware.run_server(chain, job, payload, perform)
            else:
                perform()
        except (Exception, SystemExit) as exc:  # sys.exit() in a job must not end the thread
            if d.field in self.abandoned:
                # given up by the watchdog, which settled it already (an async job is
                # cancelled then): a late failure is void, no second retry or death
                return SettleOp.drop(d.field)
            return self._failed(d, cls, job, payload, exc, started if metrics is not None else None)
        outcome = outcome_of()
        if outcome is Outcome.DONE:
            if metrics is not None:
                metrics.record(cls.job_name, d.queue, "done", time.perf_counter() - started)
            # the common case, settled here without a call into the table (one call
            # per job, measured in the drain); settlement_of gives the same op
            return SettleOp.ack(d.field, lock, payload["jid"])
        self.count(outcome)
        if metrics is not None:
            metrics.record(cls.job_name, d.queue, outcome.value, time.perf_counter() - started)
        return settlement_of(outcome, d.field, lock, lambda: dumps(payload), payload["jid"])

    def expired(self, now: float) -> list[Active]:
        """Running deliveries past their deadline (the worker's watchdog gives them up)."""
        return [a for a in list(self.active.values()) if now >= a.deadline]

    def give_up(self, a: Active) -> SettleOp | None:
        """Abandon a delivery that exceeded its class's timeout: its eventual result is
        ignored, a ReconciledJob's backend is terminated (no late commit), an async
        perform is cancelled in its event loop, and the job fails with
        :class:`JobTimeout` under the normal retry rules. None if the job finished in
        the meantime (its own thread settles it)."""
        with self._settling:
            if self.active.pop(a.delivery.field, None) is None:
                return None
            self.abandoned.add(a.delivery.field)
        future = a.job._future
        if future is not None:
            future.cancel()  # an async perform: cancelled in the loop, its thread freed
        pid = getattr(a.job, "backend_pid", None)
        if pid:
            try:
                terminate_backend(get_engine(self.settings), pid, getattr(a.job, "backend_xact_start", None))
            except Exception:
                log.exception("could not terminate backend %s of a timed-out job", pid)
        exc = JobTimeout(f"{a.cls.job_name} exceeded its timeout of {a.cls.timeout} s")
        # a copy: the abandoned thread may still fail and stamp its own payload
        return self._failed(a.delivery, a.cls, a.job, dict(a.payload), exc)

    def _failed(
        self, d: Delivery, cls: type[Job], job: Job | None, payload: dict[str, Any],
        exc: BaseException, started: float | None = None,
    ) -> SettleOp:
        """A failure, settled by the retry rules; ``started`` (``perf_counter``) is when
        its perform began, for the duration metric (None: unknown or never began)."""
        lock: str = payload.get("lock", "")
        tracing.record_exception(self.settings, exc)  # on the perform span, if any
        verdict = decide(cls, job, payload, exc, self.settings.default_retry)
        if self.metrics is not None:
            self.metrics.record(cls.job_name, d.queue, FAILURE_OUTCOMES[verdict.kind],
                                None if started is None else time.perf_counter() - started)
        line = "%s jid=%s failed (%s: %s); %s"
        args = (cls.job_name, safe(payload["jid"]), error_name(exc), safe(exc), verdict.kind)
        if verdict.kind == "retry":
            # one line; its traceback at the level the operator chose (error trackers
            # that take ERROR and above see the final failure, not each attempt)
            log.warning(line, *args)
            level = logging.getLevelName(self.settings.retry_traceback_log_level.upper())
            if log.isEnabledFor(level):
                log.log(level, "traceback of %s jid=%s", cls.job_name, safe(payload["jid"]), exc_info=exc)
        else:
            # the final failure (dead or discarded): ERROR with the traceback, which
            # Sentry's logging integration and other trackers pick up
            log.error(line, *args, exc_info=exc)
        if verdict.kind == "discard":
            return SettleOp.drop(d.field, lock, payload["jid"])
        if verdict.kind == "retry":
            if lock.startswith("@"):
                # A pass lock lives with its generation, not until the retry: through the
                # backoff the key holds perform_async's lock instead (fetch.lua keeps it
                # until the retry time + 600 s), which passes respect too; the pass lock
                # is released (a failure is rare: one more round trip is fine here).
                self.broker.release_lock(lock)
                lock = cls.lock_digest(payload["queue"], payload["args"])
                payload["lock"] = lock
            return SettleOp.retry(d.field, verdict.delay, dumps(payload), lock)
        cls.on_death(payload, exc)
        return SettleOp.dead(d.field, dumps(payload), lock)

    # -- bad input -------------------------------------------------------------------

    def _invalid(self, d: Delivery, reason: str) -> SettleOp:
        """Not a usable payload at all: keep a readable excerpt and the reason."""
        if self.metrics is not None:
            self.metrics.record(UNKNOWN_CLASS, d.queue, "dead", None)
        log.warning("invalid payload on queue %s sent to the dead set: %s", safe(d.queue), safe(reason))
        record: dict[str, Any] = {
            "queue": d.queue, "jid": "", "class": None, "args": [],
            "error_class": "InvalidPayload", "error_message": reason, "failed_at": time.time(),
            "raw": d.raw[:2000].decode("utf-8", "replace"), "raw_bytes": len(d.raw),
        }
        return SettleOp.dead(d.field, dumps(record))

    def _reject(self, d: Delivery, payload: dict[str, Any], kind: str, reason: str,
                death_hooks: bool = True) -> SettleOp:
        """A well-formed payload this worker cannot run: dead with the reason, no retries.
        ``death_hooks`` False skips the class's hooks and its quarantine (a key with no
        canonical form must not be quarantined under a second identity)."""
        if self.metrics is not None:
            name = payload.get("class")
            # a registered name, or a constant: a crafted name must not add a series
            label = name if isinstance(name, str) and name in registry.all_classes() else UNKNOWN_CLASS
            self.metrics.record(label, d.queue, "dead", None)
        log.warning("job %s jid=%s sent to the dead set: %s",
                    safe(payload.get("class")), safe(payload.get("jid")), safe(reason))
        payload["error_class"] = kind
        payload["error_message"] = reason
        payload["failed_at"] = time.time()
        exc = PayloadError(reason)
        if not death_hooks:
            return SettleOp.dead(d.field, dumps(payload), payload.get("lock", ""))
        try:
            cls = registry.resolve(payload["class"])
        except UnknownJobClass:
            pass
        else:
            run_death_hooks(cls, payload, exc)
            cls.on_death(payload, exc)
        return SettleOp.dead(d.field, dumps(payload), payload.get("lock", ""))
