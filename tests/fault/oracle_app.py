"""The oracle app of the fault suite: what must happen, what did, and how often it was tried.

Tables (in the test's own database):

* ``fault_due`` -- one row per key that needs work; ``done`` is the state
  ``pending()`` reads. Seeded by the test.
* ``fault_effects`` -- one row per effect, inserted inside the job's transaction.
  **No unique constraint**: a duplicate effect shows up as a second row.

A plain job, :class:`PlainOracle` (queue ``plain``), logs ``J <token>`` each time it
runs (scenario 13 counts plain jobs lost in a failover; ``tests.fault.enqueuer`` enqueues
them).

The attempt log is written **outside** the transaction, to append-only files (one per
process, ``O_APPEND`` writes of one line each, so it survives SIGKILL of the writer
and every fault of Redis or PostgreSQL): ``D <key>`` for each delivery the job class
handles, ``P <key>`` for each ``perform`` call.

Fault knobs, read from the environment of the worker or scheduler process at import
(test hooks live here, in the app, not in the engine):

==============================  ======================================================
``FAULT_LOG_DIR``               folder of the attempt logs (required in workers)
``FAULT_EVERY``                 seconds between passes (default 2)
``FAULT_JITTER``                jitter window of a pass (default 0)
``FAULT_PARTITIONS``            the class's ``partitions`` (default 1)
``FAULT_BATCH``                 the class's ``batch_size`` (default 1000)
``FAULT_RETRY``                 the class's ``retry`` (default 25)
``FAULT_RETRY_IN``              seconds returned by ``retry_in`` (default: Sidekiq's)
``FAULT_CRASH_AT``              ``before_perform``, ``inside_perform`` or
                                ``after_commit``: SIGKILL this process there...
``FAULT_CRASH_AFTER``           ...on its N-th delivery (default 1)
``FAULT_SLOW``                  seconds each perform sleeps inside its transaction
``FAULT_FAIL_TIMES``            perform raises ``Flaky`` on the first N attempts of a key
``FAULT_KILL_AT_COMMIT``        probability that a commit of this process has its own
                                backend terminated right around the COMMIT
``FAULT_CLOCK_OFFSET``          seconds added to ``time.time()`` in this process
                                (clock skew of one scheduler)
``FAULT_STATEMENTS``            distinct extra SELECTs each perform runs (with bind
                                parameters, so psycopg prepares each one on its
                                connection after ``prepare_threshold`` executions)
``FAULT_OWN_CONNECTION``        ``1``: each perform also runs a statement on a
                                connection of its own from the process's engine (as
                                the demo's mailer does), while it holds the delivery's
==============================  ======================================================
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from reconcile import Job, ReconciledJob

metadata = sa.MetaData()
due = sa.Table(
    "fault_due", metadata,
    sa.Column("key", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
)
sa.Index("ix_fault_due_pending", due.c.key, postgresql_where=due.c.done.is_(False))
effects = sa.Table(
    "fault_effects", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("key", sa.BigInteger, nullable=False),  # no unique constraint, on purpose
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.clock_timestamp()),
)


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    return float(value) if value else default


CRASH_AT = os.environ.get("FAULT_CRASH_AT", "")
CRASH_AFTER = int(_env_float("FAULT_CRASH_AFTER", 1))
SLOW = _env_float("FAULT_SLOW", 0.0)
FAIL_TIMES = int(_env_float("FAULT_FAIL_TIMES", 0))
RETRY_IN = os.environ.get("FAULT_RETRY_IN", "")
KILL_AT_COMMIT = _env_float("FAULT_KILL_AT_COMMIT", 0.0)
CLOCK_OFFSET = _env_float("FAULT_CLOCK_OFFSET", 0.0)
OWN_CONNECTION = os.environ.get("FAULT_OWN_CONNECTION", "") == "1"
STATEMENTS = [
    # distinct texts and parameter counts: run under another's prepared name (a pooler
    # mixing psycopg's _pg3_N statements) they fail or answer wrongly, and the assert
    # in perform catches a wrong answer
    (sa.text(f"SELECT count(*) + {i} FROM fault_due WHERE key = :key"
             + "".join(f" AND :p{j} = {j}" for j in range(i % 3))),
     {f"p{j}": j for j in range(i % 3)}, i)
    for i in range(int(_env_float("FAULT_STATEMENTS", 0)))
]

if CLOCK_OFFSET:
    # Clock skew of this process (a scheduler host whose clock is wrong). Only the
    # engine's use of time.time() is affected; the schedule claims go by the database
    # clock, which is what the scenario checks.
    _real_time = time.time
    time.time = lambda: _real_time() + CLOCK_OFFSET


# -- attempt log ---------------------------------------------------------------------------

_fd: int | None = None
_fd_lock = threading.Lock()


def log_attempt(kind: str, key: Any) -> None:
    """Append ``<kind> <key>`` to this process's attempt log (one write, O_APPEND)."""
    global _fd
    if _fd is None:
        with _fd_lock:
            if _fd is None:
                folder = os.environ.get("FAULT_LOG_DIR")
                if not folder:
                    return
                _fd = os.open(os.path.join(folder, f"attempts-{os.getpid()}.log"),
                              os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, f"{kind} {key}\n".encode())


# -- crash points --------------------------------------------------------------------------

_deliveries = 0
_count_lock = threading.Lock()
_crash_armed = threading.local()


def _die(point: str) -> None:
    log_attempt("K", point)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached: SIGKILL is not deliverable late


class Flaky(RuntimeError):
    """The failure injected by ``FAULT_FAIL_TIMES``."""


class Oracle(ReconciledJob):
    """Marks a due key done and writes one effect row, in the job's transaction."""

    name = "fault.Oracle"
    every = _env_float("FAULT_EVERY", 2.0)
    jitter = _env_float("FAULT_JITTER", 0.0)
    partitions = int(_env_float("FAULT_PARTITIONS", 1))
    batch_size = int(_env_float("FAULT_BATCH", 1000))
    queue = "oracle"
    retry = int(_env_float("FAULT_RETRY", 25))

    def pending(self) -> Select[Any]:
        return sa.select(due.c.key).where(due.c.done.is_(False))

    def retry_in(self, count: int, exc: BaseException) -> float | None:
        return float(RETRY_IN) if RETRY_IN else None

    def execute(self, args: list[Any]) -> str:
        global _deliveries
        with _count_lock:
            _deliveries += 1
            mine = _deliveries
        log_attempt("D", args[0] if args else None)
        armed = bool(CRASH_AT) and mine >= CRASH_AFTER
        _crash_armed.on = armed
        if armed and CRASH_AT == "before_perform":
            _die(CRASH_AT)
        outcome = super().execute(args)
        if armed and CRASH_AT == "after_commit" and outcome == "done":
            _die(CRASH_AT)  # committed; the ack is never sent
        return outcome

    def perform(self, session: Session, key: int) -> None:  # type: ignore[override]
        log_attempt("P", key)
        if FAIL_TIMES and self.retry_count < FAIL_TIMES:
            raise Flaky(f"key {key}: injected failure {self.retry_count + 1} of {FAIL_TIMES}")
        for statement, params, expect in STATEMENTS:
            got = session.execute(statement, {"key": key, **params}).scalar()
            if got != 1 + expect:
                raise AssertionError(f"{statement} answered {got!r}, not {1 + expect}")
        if OWN_CONNECTION:
            from reconcile.config import get_settings
            from reconcile.store.engine import get_engine

            with get_engine(get_settings()).begin() as own:  # a second server connection
                own.execute(sa.text("SELECT 1"))
        session.execute(effects.insert().values(key=key, pid=os.getpid()))
        if getattr(_crash_armed, "on", False) and CRASH_AT == "inside_perform":
            session.flush()
            _die(CRASH_AT)  # the effect is written but not committed
        if SLOW:
            time.sleep(SLOW)
        session.execute(due.update().where(due.c.key == key).values(done=True))


class PlainOracle(Job):
    """A plain job (no PostgreSQL truth behind it): logs ``J <token>`` when it runs, so a
    scenario can count plain jobs enqueued and never run (lost in a failover)."""

    name = "fault.PlainOracle"
    queue = "plain"

    def perform(self, token: str) -> None:
        log_attempt("J", token)


# -- backends terminated right around COMMIT -------------------------------------------------

_killer: psycopg.Connection | None = None
_killer_lock = threading.Lock()


def _kill_backend(pid: int, delay: float) -> None:
    global _killer
    if delay:
        time.sleep(delay)
    with _killer_lock:
        try:
            if _killer is None or _killer.closed:
                _killer = psycopg.connect(os.environ["FAULT_KILLER_DSN"], autocommit=True,
                                          connect_timeout=3)
            _killer.execute("SELECT pg_terminate_backend(%s)", [pid])
            log_attempt("T", pid)
        except psycopg.Error:
            _killer = None


def _on_commit(conn: sa.Connection) -> None:
    if random.random() >= KILL_AT_COMMIT:
        return
    try:
        pid = conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
    except Exception:
        return
    if random.random() < 0.5:
        _kill_backend(pid, 0.0)  # dead before COMMIT is sent: the commit fails
    else:
        # races the COMMIT: the server may have committed when the client learns the
        # connection is gone (an unknown outcome, step 2 resolves it on re-delivery)
        threading.Thread(target=_kill_backend, args=(pid, random.uniform(0, 0.003)),
                         daemon=True).start()


if KILL_AT_COMMIT > 0:
    sa.event.listen(sa.Engine, "commit", _on_commit)
