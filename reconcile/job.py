"""``Job``: Sidekiq-style background jobs with JSON arguments.

Subclass, set options as class attributes, define ``perform``::

    class HardWork(Job):
        queue = "default"
        retry = 5
        def perform(self, user_id, action, options=None): ...

    HardWork.perform_async(42, "sync")
    HardWork.perform_in(3600, 42, "report")
    HardWork.set(queue="critical", wait=30).perform_async(42, "sync")

Plain jobs are at-least-once while Redis keeps them (like Sidekiq Pro's reliable
fetch): a crashed worker's jobs come back, but a Redis that loses its data loses
the plain jobs in it. For work that must survive Redis, use
:class:`~reconcile.reconciled.ReconciledJob`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from . import aio, registry
from .after_commit import defer
from .client import enqueue
from .errors import ArgumentError, ConfigError
from .identity import unique_digest
from .options import OPTION_RULES, as_seconds, epoch, no_keywords, option_error, run_at, run_in, seconds
from .outcome import Outcome
from .payload import UNBOUNDED, Arity, check_args
from .scheduler.cron import Cron

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


DISCARD: Final = _Sentinel("DISCARD")
"""Return from ``retry_in`` to drop the failed job without retrying or keeping it."""

KILL: Final = _Sentinel("KILL")
"""Return from ``retry_in`` to send the failed job straight to the dead set."""

RetryDecision = float | int | None | _Sentinel


def check_class_options(cls: type[Job]) -> None:
    """Validate ``cls``'s options (its ``option_names``) at class definition;
    :class:`ConfigError` naming the class, the option, the value and what is allowed."""
    where = f"{cls.__module__}.{cls.__qualname__}"
    for name in cls.option_names:
        value = getattr(cls, name)
        why = OPTION_RULES[name](value)
        if why is not None:
            raise ConfigError(f"{where}: {option_error(name, value, why)}")
    arity = cls.arity()  # also refuses a perform that can never be called
    if cls.cron is not None:
        try:
            Cron(cls.cron, cls.tz)
        except ConfigError as exc:
            raise ConfigError(f"{where}: option cron: {exc}") from None
    try:
        # a plain cron job is enqueued with cron_args (a ReconciledJob's cron drives passes)
        check_args(cls.cron_args, f"{where}.cron_args",
                   arity=arity if cls.cron is not None and not cls.injected_params else None)
    except ArgumentError as exc:
        raise ConfigError(str(exc)) from None


class Job:
    """Base class of plain jobs. Options are class attributes; defaults below."""

    name: ClassVar[str | None] = None
    """Registry name. Default ``module.QualName``; set it to keep payloads valid across a rename."""

    queue: ClassVar[str] = "default"
    """Queue the job is pushed to. Default ``"default"``."""

    retry: ClassVar[int | bool] = True
    """``True``: 25 retries (``default_retry``); an int: that many; ``0``: a failure goes
    straight to the dead set; ``False``: a failure is discarded. Default ``True``."""

    unique_for: ClassVar[float | timedelta | None] = None
    """Seconds during which an identical (class, queue, args) enqueue is dropped (returns
    None): None or 0 for no uniqueness (on a ReconciledJob, None means its default and 0
    turns the lock off), else at least 1. Default None (no uniqueness)."""

    unique_until: ClassVar[Literal["success", "start"]] = "success"
    """When the uniqueness lock is released early: ``"success"`` (the job succeeded, was
    discarded or died) or ``"start"`` (perform began). Default ``"success"``."""

    discard_on: ClassVar[tuple[type[BaseException], ...]] = ()
    """Exception types that discard the job at once, without retries. Default none."""

    backtrace: ClassVar[bool | int] = True
    """How much of a failure's traceback the retry and dead records keep (the payload's
    ``error_backtrace``): ``True`` keeps the :data:`~reconcile.worker.retry.BACKTRACE_FRAMES`
    frames nearest the error, an int that many, ``False`` (or 0) none. The text is
    capped at :data:`~reconcile.worker.retry.MAX_BACKTRACE_BYTES` either way. Default True."""

    timeout: ClassVar[float | None] = None
    """Seconds after which the worker gives the job up: it fails with ``JobTimeout``
    (retry rules apply) and a new thread takes its place. A ReconciledJob's PostgreSQL
    backend is terminated, so it can never commit late; a plain job's code keeps running
    in its orphaned thread (Python cannot stop a thread), its result ignored.
    Default None (no limit)."""

    cron: ClassVar[str | None] = None
    """A cron expression (``"0 3 * * *"``) makes a plain job periodic: the scheduler
    enqueues it once per tick, cluster-wide, with ``cron_args``. Default None."""

    cron_args: ClassVar[tuple[Any, ...]] = ()
    """Arguments of the periodic enqueue. Default none."""

    tz: ClassVar[str] = "UTC"
    """Time zone of ``cron``. Default ``"UTC"``."""

    job_name: ClassVar[str] = ""
    """Set on subclass creation: the name payloads carry (read-only)."""

    abstract: ClassVar[bool] = True
    """Base classes that are never enqueued set this; subclasses are concrete by default."""

    option_names: ClassVar[tuple[str, ...]] = (
        "queue", "retry", "unique_for", "unique_until", "timeout", "discard_on", "cron", "tz",
        "cron_args", "backtrace",
    )
    """Options validated when a concrete subclass is defined (see ``OPTION_RULES``)."""

    _arg_names: ClassVar[list[str] | None] = None
    _arity: ClassVar[Arity | None] = None

    injected_params: ClassVar[int] = 0
    """Leading perform parameters the engine supplies (ReconciledJob: the session)."""

    keyed: ClassVar[bool] = False
    """Whether arguments are a key with a canonical form (ReconciledJob): enqueue and
    delivery then pass them through :meth:`canonical_args`."""

    # instance state, set by the worker before perform
    jid: str
    payload: dict[str, Any]
    _future: Any = None  # an async perform's future while it runs (see reconcile.aio)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "abstract" not in cls.__dict__:
            cls.abstract = False
        if cls.abstract:
            return
        cls._arg_names = None
        cls._arity = None
        check_class_options(cls)  # before registering: a refused class never becomes usable
        cls.job_name = registry.register(cls)
        if isinstance(cls.unique_for, timedelta):
            cls.unique_for = cls.unique_for.total_seconds()

    @property
    def retry_count(self) -> int:
        """How many times this job has been retried so far (0 on the first run)."""
        count = self.payload.get("retry_count")
        return int(count) + 1 if count is not None else 0

    def perform(self, *args: Any) -> Any:
        """The work. Arguments are those given at enqueue, after a JSON round trip.
        May be ``async def``: the coroutine runs on the process's event loop
        (:mod:`reconcile.aio`) while the executor thread waits for it."""
        raise NotImplementedError(f"{type(self).__name__}.perform is not defined")

    def retry_in(self, count: int, exc: BaseException) -> RetryDecision:
        """Seconds to wait before retry number ``count`` (0-based) after ``exc``.

        Return None for Sidekiq's default ``count**4 + 15 + rand(10) * (count + 1)``,
        ``DISCARD`` to drop the job, or ``KILL`` to send it to the dead set now.
        """
        return None

    @classmethod
    def retries_exhausted(cls, payload: dict[str, Any], exc: BaseException) -> None:
        """Called once when the job will not be retried again, before it goes dead."""

    # -- engine hooks (overridden by ReconciledJob, not meant for applications) -----

    def execute(self, args: list[Any]) -> Outcome:
        """Run the job; returns the :class:`~reconcile.outcome.Outcome`: ``DONE``, or
        for a ReconciledJob also ``ALREADY_DONE``, ``LOCK_BUSY``, ``DB_UNAVAILABLE`` or
        ``DISABLED``. Plain jobs just perform (an async perform's coroutine is run to
        its end)."""
        result = self.perform(*args)
        # `is not None` first: most performs return None, and the test skips a call
        # per job then (inspect.iscoroutine is a Python function)
        if result is not None and inspect.iscoroutine(result):
            aio.run(result, owner=self)
        return Outcome.DONE

    @classmethod
    def on_death(cls, payload: dict[str, Any], exc: BaseException) -> None:
        """Engine hook when a job enters the dead set (ReconciledJob quarantines its key)."""

    @classmethod
    def canonical_args(cls, args: Sequence[Any]) -> list[Any]:
        """The one form of ``args`` that identities are computed from. Plain jobs: the
        arguments as given; ReconciledJob: the key's canonical form (:mod:`reconcile.keys`)."""
        return list(args)

    # -- options -------------------------------------------------------------------

    @classmethod
    def options(cls) -> dict[str, Any]:
        """The class's enqueue options as a dict."""
        return {
            "queue": cls.queue,
            "retry": cls.retry,
            "unique_for": cls.unique_for,
            "unique_until": cls.unique_until,
        }

    @classmethod
    def enqueue_allowed(cls) -> bool:
        """Checked once per enqueue call before any payload is built; False makes every
        job of the call return None. ReconciledJob refuses while its kill switch is off."""
        return True

    @classmethod
    def lock_digest(cls, queue: str, args: list[Any]) -> str:
        """Uniqueness identity of one enqueue: (class, queue, args) for plain jobs."""
        return unique_digest(cls.job_name, queue, args)

    @classmethod
    def pass_lock_name(cls) -> str:
        """The class name under which reconcile passes lock this class's keys
        (``{ns}:plocks:<name>``), so that an enqueue respects a pass's lock too; ""
        for a plain job, which passes never enqueue."""
        return ""

    @classmethod
    def arg_names(cls) -> list[str]:
        """Parameter names of ``perform`` (for error messages)."""
        if cls._arg_names is None:
            try:
                params = list(inspect.signature(cls.perform).parameters.values())
                params = params[1 + cls.injected_params:]
                cls._arg_names = [
                    p.name for p in params
                    if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                ]
            except (TypeError, ValueError):
                cls._arg_names = []
        return cls._arg_names

    @classmethod
    def arity(cls) -> Arity:
        """(fewest, most) positional arguments ``perform`` accepts after the injected
        ones (most is ``UNBOUNDED`` with ``*args``) and its parameters as text, for
        messages. Computed once per class; enqueue checks each job against it, and the
        worker each payload. A required keyword-only parameter can never be given (job
        arguments are positional), so such a ``perform`` is a ConfigError."""
        found = cls._arity
        if found is None:
            try:
                params = list(inspect.signature(cls.perform).parameters.values())
            except (TypeError, ValueError):
                found = (0, UNBOUNDED, "*args")
            else:
                params = params[1 + cls.injected_params:]
                lo = hi = 0
                for p in params:
                    if p.kind is p.VAR_POSITIONAL:
                        hi = UNBOUNDED
                    elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                        hi += 1
                        lo += p.default is p.empty
                    elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
                        raise ConfigError(
                            f"{cls.__module__}.{cls.__qualname__}.perform has a required "
                            f"keyword-only parameter {p.name!r}, which no job can pass: job "
                            "arguments are positional"
                        )
                shown = (str(p.replace(annotation=p.empty)) for p in params)
                found = (lo, hi, ", ".join(shown))
            cls._arity = found
        return found

    # -- enqueue API ---------------------------------------------------------------

    @classmethod
    def perform_async(cls, *args: Any, **kwargs: Any) -> str | None:
        """Enqueue now. Returns the jid, or None if middleware or uniqueness dropped it.
        Every enqueue method raises ArgumentError for arguments that are not JSON-native,
        for a count ``perform`` does not accept, and for keyword arguments."""
        if kwargs:
            no_keywords(cls.job_name, kwargs)
        return enqueue(cls, [args])[0]

    @classmethod
    def perform_in(cls, interval: float | int | timedelta, *args: Any, **kwargs: Any) -> str | None:
        """Enqueue to run after ``interval`` (seconds or timedelta), which must be finite
        and within ``max_schedule_seconds`` (default 5 years)."""
        no_keywords(cls.job_name, kwargs)
        delay = run_in(cls.job_name, seconds(interval, cls.job_name), "perform_in")
        return enqueue(cls, [args], delay=delay)[0]

    @classmethod
    def perform_at(cls, when: datetime | float | int, *args: Any, **kwargs: Any) -> str | None:
        """Enqueue to run at ``when`` (aware datetime or epoch seconds), finite and
        within ``max_schedule_seconds`` from now."""
        no_keywords(cls.job_name, kwargs)
        at = epoch(when, cls.job_name)
        return enqueue(cls, [args], at=run_at(cls.job_name, at, "perform_at"))[0]

    @classmethod
    def perform_after_commit(cls, session: Session, *args: Any, **kwargs: Any) -> None:
        """Enqueue when ``session``'s transaction (the current one, or the next if none
        has begun) commits; nothing if it rolls back (see :mod:`reconcile.after_commit`).
        Arguments (and their count) are checked now."""
        no_keywords(cls.job_name, kwargs)
        defer(session, cls, args)

    @classmethod
    def perform_bulk(cls, args_list: Iterable[Sequence[Any]]) -> list[str | None]:
        """Enqueue many jobs, ``bulk_batch_size`` (1000) per round trip. Every job's
        arguments are checked before any is written."""
        return enqueue(cls, list(args_list))

    @classmethod
    def set(
        cls,
        *,
        queue: str | None = None,
        wait: float | timedelta | None = None,
        wait_until: datetime | float | None = None,
        retry: int | bool | None = None,
        unique_for: float | timedelta | None = None,
        unique_until: Literal["success", "start"] | None = None,
    ) -> JobSetter:
        """Options for one enqueue: ``HardWork.set(queue="critical", wait=30).perform_async(1)``.

        None leaves an option as the class has it; ``unique_for=0`` turns uniqueness off
        for these enqueues. Each option given is checked now, by the class options'
        rules (docs/jobs.md),
        and ``wait``/``wait_until`` like ``perform_in``/``perform_at``: ArgumentError
        naming the class, the option, the value and what is allowed."""
        opts: dict[str, Any] = {}
        given = {"queue": queue, "retry": retry, "unique_for": unique_for,
                 "unique_until": unique_until}
        for name, value in given.items():
            if value is None:
                continue
            why = OPTION_RULES[name](value)
            if why is not None:
                raise ArgumentError(f"{cls.job_name}.set(): {option_error(name, value, why)}")
            opts[name] = as_seconds(value)
        at = delay = 0.0
        if wait is not None:
            delay = run_in(cls.job_name, seconds(wait, cls.job_name, "wait"), "set(wait=)")
        elif wait_until is not None:
            at = run_at(cls.job_name, epoch(wait_until, cls.job_name, "wait_until"), "set(wait_until=)")
        return JobSetter(cls, opts, at, delay)


class JobSetter:
    """The result of ``Job.set(...)``: the enqueue API with per-call options. ``at``
    (from ``wait_until``) is absolute; ``delay`` (from ``wait``) counts from each
    enqueue, on the Redis server's clock."""

    def __init__(self, job_class: type[Job], options: dict[str, Any], at: float, delay: float = 0.0) -> None:
        self.job_class = job_class
        self.opts = options
        self.at = at
        self.delay = delay

    def perform_async(self, *args: Any, **kwargs: Any) -> str | None:
        if kwargs:
            no_keywords(self.job_class.job_name, kwargs)
        return enqueue(self.job_class, [args], options=self.opts, at=self.at, delay=self.delay)[0]

    def perform_after_commit(self, session: Session, *args: Any, **kwargs: Any) -> None:
        no_keywords(self.job_class.job_name, kwargs)
        defer(session, self.job_class, args, self.opts, self.at, self.delay)

    def perform_in(self, interval: float | int | timedelta, *args: Any, **kwargs: Any) -> str | None:
        name = self.job_class.job_name
        no_keywords(name, kwargs)
        delay = run_in(name, seconds(interval, name), "perform_in")
        return enqueue(self.job_class, [args], options=self.opts, delay=delay)[0]

    def perform_at(self, when: datetime | float | int, *args: Any, **kwargs: Any) -> str | None:
        name = self.job_class.job_name
        no_keywords(name, kwargs)
        at = run_at(name, epoch(when, name), "perform_at")
        return enqueue(self.job_class, [args], options=self.opts, at=at)[0]

    def perform_bulk(self, args_list: Iterable[Sequence[Any]]) -> list[str | None]:
        return enqueue(self.job_class, list(args_list), options=self.opts, at=self.at, delay=self.delay)

