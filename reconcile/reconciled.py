"""``ReconciledJob``: work derived from PostgreSQL, executed with enforced idempotency.

A ReconciledJob declares *which keys still need work* as a SQLAlchemy SELECT
(``pending()``), and *the work for one key* (``perform(session, *key)``). The
scheduler re-runs ``pending()`` every ``every`` seconds (or on ``cron``) and enqueues
each key; the worker executes each delivery with this protocol, in one transaction:

1. ``pg_try_advisory_xact_lock(job, key)``; if another worker holds it, the delivery
   is re-scheduled a few seconds later (outcome ``lock_busy``);
2. re-check ``is_pending(session, *key)`` under the lock (by default ``pending()``
   restricted to the key, compiled once per class and run on the driver connection:
   :func:`reconcile.store.key_check.delivery_check`); if the key is no longer pending,
   ack as ``already_done``;
3. ``perform(session, *key)`` in that transaction; it must not commit, roll back or
   close the session (:class:`~reconcile.errors.ProtocolViolation`, see
   :func:`reconcile.store.engine.run_perform`);
4. re-check: if the key is still pending, roll back and raise :class:`NotConverged`
   (a perform that does not make its own effect visible is a bug, caught here);
5. commit; only then is the delivery acked in Redis.

The protocol is written once, in ``_execute``, against a delivery transaction
(:class:`reconcile.store.delivery.DeliveryTx`): a plain SQLAlchemy one that is the
specification, and the driver-level fast one the worker runs unless ``fast_paths``
is false.

A kill between commit and ack re-delivers the job; step 2 makes that a no-op. A broken
connection during COMMIT is an unknown outcome, resolved the same way: a lost database
connection (restart, terminated backend) re-schedules the delivery a few seconds later
(outcome ``db_unavailable``) without spending a retry. Keys that die
(retries exhausted, or recovered from crashed workers too often) are written to
``reconcile_quarantine`` so passes stop re-enqueuing a poison pill until released.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from .config import Settings, get_settings
from .errors import CheckGone, ConfigError, NotConverged
from .identity import idempotency_key, key_digest
from .job import Job
from .keys import KeyCodec
from .logs import safe
from .outcome import Outcome

if TYPE_CHECKING:
    from .store.delivery import DeliveryTx
    from .store.switches import SwitchCache

# The store modules are imported where they are used, not here: ``import reconcile``
# (every process of plain Jobs, every enqueue) must not load psycopg and the store,
# which cost ~100 ms and 90 modules and are only needed by a ReconciledJob delivery.

log = logging.getLogger("reconcile.reconciled")

MIN_UNIQUE_FOR = 600.0
MAX_UNIQUE_FOR = 86_400.0


_last_switches: tuple[Settings, SwitchCache] | None = None


def switch_cache(settings: Settings) -> SwitchCache:
    """This process's kill-switch cache (see :func:`reconcile.store.switches.switch_cache`)."""
    global _last_switches
    # Read for every delivery: the last settings' cache is kept here, which spares the
    # lookup under a process-wide lock (one assignment, so threads see either pair).
    last = _last_switches
    if last is not None and last[0] is settings:
        return last[1]
    from .store.switches import switch_cache as cache

    found = cache(settings)
    _last_switches = (settings, found)
    return found


DB_LOST_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
"""admin_shutdown (pg_terminate_backend, smart/fast stop), crash_shutdown, cannot_connect_now
(starting up, recovering); class 08 (connection exceptions) counts too."""


def database_lost(exc: DBAPIError) -> bool:
    """Whether ``exc`` means the connection to PostgreSQL was lost (not an error of the
    job's SQL). An idle-in-transaction timeout (25P03) is the job's own ``timeout``."""
    state = getattr(exc.orig, "sqlstate", None)
    if state == "25P03":
        return False
    if state in DB_LOST_SQLSTATES or (state or "").startswith("08"):
        return True
    # no SQLSTATE: the server never answered (refused, reset, closed mid-statement)
    return state is None and (bool(exc.connection_invalidated) or isinstance(exc, OperationalError))


class ReconciledJob(Job):
    """Base class of jobs whose pending work lives in PostgreSQL. Options below."""

    abstract = True
    injected_params = 1  # perform(self, session, *key)
    option_names = (*Job.option_names, "every", "jitter", "batch_size", "high_water", "partitions",
                    "pending_since")

    every: ClassVar[float | timedelta | None] = None
    """Seconds (or timedelta) between reconcile passes. Exactly one of ``every`` and
    ``cron`` must be set. Default None."""

    jitter: ClassVar[float] = 0.0
    """Seconds over which one pass spreads its enqueues (uniformly). Default 0."""

    batch_size: ClassVar[int] = 1000
    """Keys per page of the pass and per Redis round trip. Default 1000."""

    high_water: ClassVar[int | None] = None
    """Back-pressure: a pass stops enqueuing once the class's backlog is above this
    many jobs and records the rest as deferred (see the setting ``pass_high_water``,
    which applies when this is None; 0: no limit). Default None."""

    partitions: ClassVar[int] = 1
    """Split each pass into this many key ranges, each its own schedule row that any
    scheduler may claim, so several schedulers share one class's pass (see
    ``docs/scheduler.md``, "Partitioned passes"). Default 1: one pass over every key."""

    pending_since: ClassVar[str | None] = None
    """Name of a timestamp column of ``pending()`` (one it selects, or a column of a
    table it selects from) saying since when a key has been pending, such as
    ``"created_at"``. It gives the metric ``reconcile_lag_seconds``: the age of the
    oldest still-pending key (docs/metrics.md, with the index to add). Default None
    (no lag is exported for the class)."""

    backend_pid: int | None = None  # set during execute when ``timeout`` is set
    backend_xact_start: int | None = None  # with it behind a transaction pooler

    def pending(self) -> Select[Any]:
        """A SELECT of the keys that still need work; its columns are the key."""
        raise NotImplementedError(f"{type(self).__name__}.pending is not defined")

    def perform(self, session: Session, *key: Any) -> None:
        """Make ``key`` stop being pending, using ``session`` (never commit it)."""
        raise NotImplementedError(f"{type(self).__name__}.perform is not defined")

    def is_pending(self, session: Session, *key: Any) -> bool:
        """Whether ``key`` is still pending, inside the current transaction.

        Default: ``pending()`` restricted to ``key`` (the session is flushed first, as
        a query through it would be). Override for a query that cannot be restricted
        automatically (for example one with LIMIT or window functions); the worker then
        calls the override before and after ``perform``.
        """
        from .store.driver_tx import DriverTx
        from .store.key_check import delivery_check
        from .store.pending import run_check, still_pending

        if not get_settings().fast_paths:
            return still_pending(session, self.pending(), key)  # the reference
        if session.autoflush:
            session.flush()
        bind = session.connection()
        check = delivery_check(type(self), self.pending, bind.dialect, key)
        if isinstance(check, tuple):
            return DriverTx(bind).exists(check)
        return run_check(bind, check)

    # -- options derived from the schedule -----------------------------------------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        for hook in ("perform", "is_pending", "pending"):
            if inspect.iscoroutinefunction(cls.__dict__.get(hook)):
                # before registering: the class never becomes usable
                raise ConfigError(
                    f"{cls.__module__}.{cls.__qualname__}.{hook} is async: a ReconciledJob's "
                    "methods run inside the delivery's PostgreSQL transaction with a "
                    "synchronous Session, so they must be plain functions (a plain Job may "
                    "have an async perform)"
                )
        super().__init_subclass__(**kwargs)
        if cls.abstract:
            return
        if isinstance(cls.every, timedelta):
            cls.every = cls.every.total_seconds()
        from .scheduler.cron import parse_schedule

        try:  # fail at import, naming the class, not later in the scheduler
            parse_schedule(every=cls.every, cron=cls.cron, tz=cls.tz if cls.cron else None)
        except ConfigError as exc:
            raise ConfigError(f"{cls.__module__}.{cls.__qualname__}: {exc}") from None
        if "unique_for" not in cls.__dict__ and cls.unique_for is None:
            cls.unique_for = cls.default_unique_for()

    @classmethod
    def interval_estimate(cls) -> float:
        """Seconds between passes (for cron: between the next two fire times)."""
        if cls.every is not None:
            return float(cls.every)  # type: ignore[arg-type]
        if cls.cron:
            from .scheduler.cron import parse_schedule

            sched = parse_schedule(cron=cls.cron, tz=cls.tz)
            from datetime import UTC, datetime

            first = sched.next_after(datetime.now(UTC))
            return (sched.next_after(first) - first).total_seconds()
        return 60.0

    @classmethod
    def default_unique_for(cls) -> float:
        """Uniqueness lock lifetime when none is set: three pass intervals plus the
        jitter window, clamped to [600 s, 1 day]. A lock only saves work (duplicates are
        harmless); its expiry is what lets a pass re-enqueue a key whose job Redis lost
        while the lock survived (eviction)."""
        span = 3 * cls.interval_estimate() + float(cls.jitter)
        return min(MAX_UNIQUE_FOR, max(MIN_UNIQUE_FOR, span))

    @classmethod
    def enqueue_allowed(cls) -> bool:
        """The kill switch, checked at enqueue: a disabled class's enqueues return None
        (logged). Safe: the next pass after ``reconcile enable`` re-derives them."""
        if switch_cache(get_settings()).is_enabled(cls.job_name):
            return True
        log.info("%s is disabled: enqueue rejected", cls.job_name)
        return False

    keyed = True

    @classmethod
    def key_codec(cls) -> KeyCodec:
        """The canonical forms of this class's keys, derived from the column types of
        ``pending()`` (called once per process to read them)."""
        return KeyCodec.of(cls)

    @classmethod
    def canonical_args(cls, args: Sequence[Any]) -> list[Any]:
        """The key's canonical (wire) form; :class:`~reconcile.errors.InvalidKey`, naming
        the key column and the value, for a value its column cannot take losslessly."""
        return KeyCodec.of(cls).wire(args)

    @classmethod
    def lock_digest(cls, queue: str, args: list[Any]) -> str:
        """Uniqueness identity of a reconciled job: (class, key), whatever the queue.
        ``args`` is the key's canonical form (enqueue canonicalises first)."""
        return key_digest(cls.job_name, args)

    @classmethod
    def status(cls, *key: Any) -> dict[str, Any]:
        """Why this key is or is not done: pending in PostgreSQL, running, in Redis,
        quarantined, disabled, and a one-word ``verdict``
        (:func:`reconcile.whereis.key_status`; the shape is in docs/cli.md). ``key``:
        the key's values (``ShipOrder.status(42)``, ``Sync.status(7, "eu")``)."""
        from .whereis import key_status

        return key_status(cls, key)

    @classmethod
    def pass_lock_name(cls) -> str:
        """The job name, while the class keeps the default identity (its key): then a
        pass's lock of a key is a member of ``{ns}:plocks:<name>``, which
        ``perform_async`` respects. "" for a custom :meth:`lock_digest`, whose keys
        passes enqueue through ``client.enqueue`` with that digest's lock only."""
        owner = next(c for c in cls.__mro__ if "lock_digest" in vars(c))
        return cls.job_name if owner is ReconciledJob else ""

    @property
    def idempotency_key(self) -> str:
        """Stable for (class, key): pass it to external APIs so a retried side effect is
        recognised by the other side (e.g. Stripe's ``Idempotency-Key``)."""
        return idempotency_key(self.job_name, self.payload["args"])

    # -- the execution protocol ------------------------------------------------------

    def execute(self, args: list[Any]) -> Outcome:
        """Run one delivery of the key ``args``, which must be in canonical form (the
        worker canonicalises a payload's args first): the lock id is computed from it,
        and ``perform`` receives its native form (:meth:`KeyCodec.native`)."""
        settings = get_settings()
        name = self.job_name
        try:
            if not switch_cache(settings).is_enabled(name):
                return Outcome.DISABLED
            try:
                return self._execute(settings, name, args)
            except CheckGone as exc:
                # nothing was committed; the next run commits with the check as SQL
                log.info("%s%r: prepared commit check %s was deallocated during perform "
                         "(a savepoint rollback or DDL); running the delivery again",
                         name, tuple(args), safe(exc))
                return self._execute(settings, name, args)
        except DBAPIError as exc:
            if not database_lost(exc):
                raise
            # PostgreSQL restarted, or this backend was terminated: not the job's fault,
            # so no retry is spent and no backoff applies; the delivery runs again in a
            # few seconds, and step 2 resolves a COMMIT whose outcome is unknown.
            log.warning("%s%r: database connection lost (%s); re-scheduled",
                        name, tuple(args), safe(str(exc.orig).strip().splitlines()[0][:200]))
            return Outcome.DB_UNAVAILABLE

    def _execute(self, settings: Settings, name: str, args: list[Any]) -> Outcome:
        """The protocol of the module docstring, on a :class:`DeliveryTx` (the reference
        or the fast one, see :meth:`_delivery_tx`)."""
        from .store.engine import delivery_session, get_engine, run_perform
        from .store.pending import lock_id
        from .store.pooler import pooler_mode

        engine = get_engine(settings)
        # the lock is the canonical key's; the check and perform get the typed values
        key = KeyCodec.of(type(self)).native(args)
        with delivery_session(engine) as session, session.begin():
            tx = self._delivery_tx(session, settings, key, pooler_mode(engine))
            # 1. lock the key, 2. re-check it under the lock
            locked, pending = tx.begin(lock_id(name, args), float(self.timeout) if self.timeout else None)
            if not locked:
                return Outcome.LOCK_BUSY
            if not pending:
                return Outcome.ALREADY_DONE
            if self.timeout:
                # the watchdog's kill switch: read inside the transaction, where a
                # transaction pooler has bound the server connection it names
                self.backend_pid, self.backend_xact_start = tx.backend()
            # 3. perform, which must not commit
            run_perform(session, tx, self.perform, key)
            # 4. re-check, 5. commit if converged
            if not tx.finish():
                raise NotConverged(
                    f"{name}{tuple(args)!r}: perform returned but the key is still pending; "
                    "the transaction was rolled back"
                )
        return Outcome.DONE

    def _delivery_tx(self, session: Session, settings: Settings, key: Sequence[Any],
                     pooler: str = "none") -> DeliveryTx:
        """The delivery transaction for this job: with ``fast_paths`` off, the reference
        (:class:`SessionDelivery`, the checks by :meth:`is_pending`); otherwise the fast
        one, with the default ``is_pending`` inlined: the check is built once for both
        steps (the same values), and a compiled one runs on the driver connection. An
        override is the application's, called as is."""
        from .store.delivery import DriverDelivery, SessionDelivery
        from .store.key_check import delivery_check

        if not settings.fast_paths:
            return SessionDelivery(session, lambda: self.is_pending(session, *key), pooler)
        statement: Select[Any] | None = None
        compiled: tuple[str, dict[str, Any]] | None = None
        if type(self).is_pending is ReconciledJob.is_pending:
            bind = session.get_bind()
            check = delivery_check(type(self), self.pending, bind.dialect, key)
            if isinstance(check, tuple):
                compiled = check  # run by DriverTx
            else:
                statement = check  # run by SQLAlchemy
        # behind a transaction pooler a PREPAREd check would be unknown (or another
        # client's) on the next server connection
        prepare = settings.prepared_checks and pooler != "transaction"
        return DriverDelivery(session, prepare, compiled,
                              lambda: self._still_pending(session, statement, key), pooler)

    def _still_pending(self, session: Session, check: Select[Any] | None, args: Sequence[Any]) -> bool:
        """Steps 2 and 4 of the fast path where the check is not compiled SQL: a
        statement SQLAlchemy runs, or the class's own ``is_pending`` when ``check`` is
        None."""
        from .store.pending import run_check

        if check is None:
            return self.is_pending(session, *args)
        return run_check(session, check)  # through the Session: autoflush as before

    @classmethod
    def on_death(cls, payload: dict[str, Any], exc: BaseException) -> None:
        """Quarantine the key so passes stop re-enqueuing it until an operator releases it."""
        from .store import quarantine
        from .store.engine import get_engine

        key = payload.get("args")
        if not isinstance(key, list):
            return
        try:
            quarantine.add(
                get_engine(get_settings()), cls.job_name, key,
                reason=str(payload.get("error_message") or exc)[:2000],
                error_class=str(payload.get("error_class") or type(exc).__name__),
                error_message=str(exc)[:2000],
                payload=payload,
            )
            log.error("%s%r quarantined: %s", cls.job_name, tuple(key), safe(exc))
        except Exception:
            # The dead set still holds the job; the next pass would re-enqueue the key,
            # which dies again and retries this write.
            log.exception("could not quarantine %s%r", cls.job_name, tuple(key))
