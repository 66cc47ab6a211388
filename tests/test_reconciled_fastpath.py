"""The compiled key check: steps 1, 2 and 4 of the protocol on the driver connection.

A ReconciledJob's default ``is_pending`` is its ``pending()`` restricted to one key.
The worker compiles that statement once per class (the key as bind parameters), runs
it and the advisory lock on the psycopg connection of the job's transaction, and falls
back to SQLAlchemy only for what a fixed SQL string cannot express. These tests state
what must hold: the compiled check answers exactly as the statement SQLAlchemy builds
(int, text, composite keys; Core and ORM columns; types with bind processors), values
that ``pending()`` binds are the current call's, an overridden ``is_pending`` is
called instead, and the outcomes of the protocol are unchanged.

Every test runs on the real PostgreSQL (own schema) and Redis (own namespace).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from psycopg import pq
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.sql import Select
from sqlalchemy.types import TypeDecorator

from reconcile import ReconciledJob
from reconcile.config import Settings
from reconcile.errors import NotConverged
from reconcile.store import pending as pending_sql
from tests.reconciled_app import (
    ForgetfulItem,
    NewestItems,
    ProcessItem,
    SyncStock,
    effects,
    items,
    regions,
)

fast_metadata = sa.MetaData()
tags = sa.Table(
    "fast_tags", fast_metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
)


class Lower(TypeDecorator[str]):
    """A key type with a bind processor: values are stored and compared lower-case."""

    impl = sa.String(16)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: sa.Dialect) -> str | None:
        return None if value is None else value.lower()


codes = sa.Table(
    "fast_codes", fast_metadata,
    sa.Column("code", Lower, primary_key=True),
    sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
)


class Base(DeclarativeBase):
    metadata = fast_metadata


class Account(Base):
    __tablename__ = "fast_accounts"
    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    region: Mapped[str] = mapped_column(sa.String(8), primary_key=True)
    synced: Mapped[bool] = mapped_column(default=False)


class SyncTag(ReconciledJob):
    """A text key."""

    every = 3600
    queue = "fast"

    def pending(self) -> Select[Any]:
        return sa.select(tags.c.name).where(tags.c.done.is_(False))

    def perform(self, session: Session, name: str) -> None:  # type: ignore[override]
        session.execute(tags.update().where(tags.c.name == name).values(done=True))


class SyncCode(ReconciledJob):
    """A key column whose type has a bind processor (keys arrive in any case)."""

    every = 3600
    queue = "fast"

    def pending(self) -> Select[Any]:
        return sa.select(codes.c.code).where(codes.c.done.is_(False))

    def perform(self, session: Session, code: str) -> None:  # type: ignore[override]
        session.execute(codes.update().where(codes.c.code == code).values(done=True))


class SyncAccount(ReconciledJob):
    """ORM entity columns, a composite key, and the ORM in perform."""

    every = 3600
    queue = "fast"

    def pending(self) -> Select[Any]:
        return sa.select(Account.id, Account.region).where(Account.synced.is_(False))

    def perform(self, session: Session, account_id: int, region: str) -> None:  # type: ignore[override]
        account = session.get(Account, (account_id, region))
        assert account is not None
        account.synced = True  # flushed by the worker before the re-check


class UpTo(ReconciledJob):
    """``pending()`` binds a Python value of its own, read at each call."""

    every = 3600
    queue = "fast"
    limit: ClassVar[int] = 10
    calls: ClassVar[int] = 0

    def pending(self) -> Select[Any]:
        UpTo.calls += 1
        return sa.select(items.c.id).where(items.c.done.is_(False), items.c.id <= UpTo.limit)

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        session.execute(items.update().where(items.c.id == item_id).values(done=True))


class Shaped(ReconciledJob):
    """``pending()`` binds no value, but its structure follows a switch."""

    every = 3600
    queue = "fast"
    even_only: ClassVar[bool] = False
    calls: ClassVar[int] = 0

    def pending(self) -> Select[Any]:
        Shaped.calls += 1
        q = sa.select(items.c.id).where(items.c.done.is_(False))
        return q.where(items.c.id % 2 == 0) if Shaped.even_only else q

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        session.execute(items.update().where(items.c.id == item_id).values(done=True))


class InList(ReconciledJob):
    """An ``in_()`` list renders per call: SQLAlchemy runs this check."""

    every = 3600
    queue = "fast"

    def pending(self) -> Select[Any]:
        return sa.select(items.c.id).where(items.c.done.is_(False), items.c.id.in_([1, 2, 3]))

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        session.execute(items.update().where(items.c.id == item_id).values(done=True))


class Timed(ReconciledJob):
    """Records, from inside perform, what the protocol set on its transaction."""

    every = 3600
    queue = "fast"
    timeout = 1.5
    seen: ClassVar[dict[str, Any]] = {}

    def pending(self) -> Select[Any]:
        return sa.select(items.c.id).where(items.c.done.is_(False))

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        row = session.execute(sa.text(
            "SELECT current_setting('statement_timeout'), "
            "current_setting('idle_in_transaction_session_timeout'), pg_backend_pid()")).one()
        Timed.seen = {"statement": row[0], "idle": row[1], "pid": row[2], "backend_pid": self.backend_pid}
        session.execute(items.update().where(items.c.id == item_id).values(done=True))


@pytest.fixture
def engine(app_engine: sa.Engine) -> Iterator[sa.Engine]:
    fast_metadata.create_all(app_engine)
    yield app_engine


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[Select[Any]]:
    """The pending statement of every compilation of a key check."""
    seen: list[Select[Any]] = []
    real = pending_sql.compile_key_check

    def counting(stmt: Select[Any], dialect: sa.Dialect, values: Any) -> pending_sql.KeyCheck:
        seen.append(stmt)
        return real(stmt, dialect, values)

    monkeypatch.setattr(pending_sql, "compile_key_check", counting)
    return seen


def both_answers(engine: sa.Engine, job: ReconciledJob, key: tuple[Any, ...]) -> tuple[bool, bool]:
    """(compiled check on the driver, the statement SQLAlchemy builds) for ``key``."""
    with Session(engine) as session, session.begin():
        compiled = job.is_pending(session, *key)
        through_sqlalchemy = pending_sql.still_pending(session, job.pending(), key)
    return compiled, through_sqlalchemy


def test_compiled_check_agrees_with_sqlalchemy_on_int_text_and_composite_keys(
    pg_settings: Settings, engine: sa.Engine
) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": 1, "done": False}, {"id": 2, "done": True}])
        c.execute(tags.insert(), [{"name": "a'b", "done": False}, {"name": "done", "done": True}])
        c.execute(regions.insert(), [{"sku": 1, "region": "eu", "synced": False},
                                     {"sku": 1, "region": "us", "synced": True}])
        c.execute(codes.insert(), [{"code": "abc"}])
    cases: list[tuple[ReconciledJob, tuple[Any, ...], bool]] = [
        (ProcessItem(), (1,), True), (ProcessItem(), (2,), False), (ProcessItem(), (3,), False),
        (SyncTag(), ("a'b",), True), (SyncTag(), ("done",), False), (SyncTag(), ("A'B",), False),
        (SyncStock(), (1, "eu"), True), (SyncStock(), (1, "us"), False), (SyncStock(), (2, "eu"), False),
        (SyncCode(), ("ABC",), True), (SyncCode(), ("abc",), True), (SyncCode(), ("abd",), False),
    ]
    for job, key, expected in cases:
        assert both_answers(engine, job, key) == (expected, expected), f"{type(job).__name__}{key}"


def test_orm_entity_columns_and_orm_perform(pg_settings: Settings, engine: sa.Engine) -> None:
    with Session(engine) as s, s.begin():
        s.add_all([Account(id=7, region="eu", synced=False), Account(id=7, region="us", synced=True)])
    assert both_answers(engine, SyncAccount(), (7, "eu")) == (True, True)
    assert both_answers(engine, SyncAccount(), (7, "us")) == (False, False)
    assert SyncAccount().execute([7, "eu"]) == "done"
    assert SyncAccount().execute([7, "eu"]) == "already_done"


def test_a_check_is_compiled_once_per_class_not_per_delivery(
    pg_settings: Settings, engine: sa.Engine, compiles: list[Select[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pending_sql, "REVERIFY_SECONDS", 3600.0)
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, 21)])
    Shaped.even_only, Shaped.calls = False, 0
    outcomes = [Shaped().execute([i]) for i in range(1, 21)] + [Shaped().execute([1])]
    assert outcomes == ["done"] * 20 + ["already_done"]
    assert len(compiles) == 1, "one compilation for 21 deliveries"
    assert Shaped.calls == 1, "a pending() that binds no value is not called again"


def test_a_pending_query_that_changes_structure_is_recompiled(
    pg_settings: Settings, engine: sa.Engine, compiles: list[Select[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pending_sql, "REVERIFY_SECONDS", 0.0)  # compare structures at every delivery
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, 5)])
    Shaped.even_only = False
    try:
        assert Shaped().execute([1]) == "done"
        Shaped.even_only = True
        assert Shaped().execute([3]) == "already_done", "odd keys are no longer pending"
        assert Shaped().execute([4]) == "done"
    finally:
        Shaped.even_only = False
    assert len(compiles) == 2


def test_values_bound_by_pending_are_read_at_each_delivery(
    pg_settings: Settings, engine: sa.Engine, compiles: list[Select[Any]]
) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, 6)])
    UpTo.limit, UpTo.calls = 10, 0
    try:
        assert UpTo().execute([1]) == "done"
        UpTo.limit = 2
        assert UpTo().execute([3]) == "already_done", "3 > the current limit: not pending"
        assert UpTo().execute([2]) == "done"
    finally:
        UpTo.limit = 10
    assert len(compiles) == 1, "the values change, not the compiled statement"
    assert UpTo.calls == 3, "once per delivery: both checks of a delivery see the same values"


def test_a_check_the_driver_cannot_take_runs_through_sqlalchemy(
    pg_settings: Settings, engine: sa.Engine
) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, 6)])
    check = pending_sql.delivery_check(InList, InList().pending, engine.dialect, [2])
    assert isinstance(check, Select), "an expanding IN list: SQLAlchemy renders it per call"
    assert [InList().execute([k]) for k in (2, 2, 5)] == ["done", "already_done", "already_done"]
    assert both_answers(engine, InList(), (1,)) == (True, True)


def test_an_overridden_is_pending_is_called_and_nothing_is_compiled(
    pg_settings: Settings, engine: sa.Engine, compiles: list[Select[Any]]
) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, 4)])
    NewestItems.calls = 0
    assert [NewestItems().execute([k]) for k in (3, 3)] == ["done", "already_done"]
    assert NewestItems.calls == 3, "before and after the perform, then before the second"
    assert compiles == []


def test_lock_busy_already_done_and_not_converged(pg_settings: Settings, engine: sa.Engine) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": 1}, {"id": 2}])
    with engine.connect() as other, other.begin():
        assert pending_sql.try_key_lock(other, ProcessItem.job_name, [1])
        assert ProcessItem().execute([1]) == "lock_busy"
    assert ProcessItem().execute([1]) == "done"
    assert ProcessItem().execute([1]) == "already_done"
    with pytest.raises(NotConverged):
        ForgetfulItem().execute([2])
    with engine.connect() as c:
        logged = c.execute(sa.select(sa.func.count()).where(effects.c.item_id == 2)).scalar()
        assert logged == 0, "the non-converged delivery's effect was rolled back"


def test_timeout_is_set_on_the_transaction_and_backend_pid_recorded(
    pg_settings: Settings, engine: sa.Engine
) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": 1}])
    job = Timed()
    assert job.execute([1]) == "done"
    assert Timed.seen["statement"] == Timed.seen["idle"] == "1500ms"
    assert Timed.seen["backend_pid"] == Timed.seen["pid"]
    with engine.connect() as c:  # SET LOCAL: the pooled connection is back to the default
        c.execute(sa.text("SELECT 1"))
        assert c.execute(sa.text("SHOW statement_timeout")).scalar() == "0"


def test_a_connection_lost_under_the_lock_statement_is_db_unavailable(
    pg_settings: Settings, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": 1}])
    real = pending_sql.DriverTx.begin_locked
    killed: list[int] = []

    def terminated_first(self: pending_sql.DriverTx, lock: int) -> bool:
        if not killed:
            killed.append(self.backend_pid)
            assert pending_sql.terminate_backend(engine, self.backend_pid)
        return real(self, lock)

    monkeypatch.setattr(pending_sql.DriverTx, "begin_locked", terminated_first)
    assert ProcessItem().execute([1]) == "db_unavailable"
    assert ProcessItem().execute([1]) == "done", "the pool replaced the dead connection"


def test_a_failed_driver_statement_is_a_sqlalchemy_error_and_the_connection_stays_usable(
    pg_settings: Settings, engine: sa.Engine
) -> None:
    with engine.connect() as conn:
        with pytest.raises(DBAPIError) as err, conn.begin():
            pending_sql.DriverTx(conn)._scalar("SELECT 1 / %s", (0,))
        assert getattr(err.value.orig, "sqlstate", None) == "22012"
        assert not err.value.connection_invalidated
        with conn.begin():  # SQLAlchemy closed the failed cursor: a new one is used
            assert pending_sql.DriverTx(conn).try_lock(42)


def test_begin_and_lock_are_one_round_trip_and_the_connection_returns_transactional(
    pg_settings: Settings, engine: sa.Engine, tmp_path: Path
) -> None:
    """Step 1 opens the transaction and takes the lock in one round trip (psycopg's own
    BEGIN would be a round trip of its own); the connection is back in transactional
    mode when the pool has it again, so its next user gets real transactions."""
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": 1}, {"id": 2}])
    trace = tmp_path / "libpq.trace"
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        assert driver is not None
        with conn.begin():
            tx = pending_sql.DriverTx(conn)
            # libpq's protocol trace: every Query (simple) or Sync (extended) message the
            # client sends ends a round trip
            with trace.open("w") as f:
                driver.pgconn.trace(f.fileno())
                driver.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
                try:
                    assert tx.begin_locked(pending_sql.lock_id("bench.ProcessItem", [1]))
                finally:
                    driver.pgconn.untrace()
            assert driver.info.transaction_status == pq.TransactionStatus.INTRANS
        sent = [line.split("\t") for line in trace.read_text().splitlines()]
        trips = [m for m in sent if m[0] == "F" and m[2] in ("Query", "Sync")]
        print(f"\nstep 1 sent {len(trips)} round trip(s): {trips[0][3:] if trips else []}")
        assert len(trips) == 1 and "BEGIN; SELECT pg_try_advisory_xact_lock(" in trips[0][3]
    assert driver.autocommit is False, "switched back at checkin"
    with engine.connect() as conn:  # the same pooled connection: transactional again
        conn.execute(items.update().where(items.c.id == 2).values(done=True))
        conn.rollback()
    with engine.connect() as conn:
        assert conn.execute(sa.select(items.c.done).where(items.c.id == 2)).scalar() is False


def test_a_delivery_adds_three_round_trips_to_performs_own(
    pg_settings: Settings, engine: sa.Engine, tmp_path: Path
) -> None:
    """BEGIN and the lock go together (step 1), the first check alone (step 2: its
    snapshot must follow the lock), and the second check with COMMIT (steps 4 and 5),
    so a delivery adds 3 round trips to perform's own statements; a non-converging
    perform still ends in NotConverged, rolled back."""
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": 1}, {"id": 2}])
    trace = tmp_path / "libpq.trace"
    traced: list[Any] = []

    def start(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        f = trace.open("a")
        traced.append(f)
        dbapi_conn.pgconn.trace(f.fileno())
        dbapi_conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)

    def stop(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.pgconn.untrace()

    sa.event.listen(engine, "checkout", start)
    sa.event.listen(engine, "checkin", stop)
    try:
        assert ProcessItem().execute([1]) == "done"
    finally:
        sa.event.remove(engine, "checkout", start)
        sa.event.remove(engine, "checkin", stop)
        for f in traced:
            f.close()
    sent = [line.split("\t") for line in trace.read_text().splitlines()]
    # a simple Query, or the Sync that ends an extended-protocol statement, is a round
    # trip; counted from the delivery's first (the switch cache may read its table first)
    trips = [m for m in sent if m[0] == "F" and len(m) > 2 and m[2] in ("Query", "Sync")]
    first = next(i for i, m in enumerate(trips) if "pg_try_advisory_xact_lock" in m[-1])
    trips = trips[first:]
    print(f"\na delivery of ProcessItem (perform: 2 statements) took {len(trips)} round trips")
    assert len(trips) == 5, trips
    assert trips[0][3].startswith(' "BEGIN; SELECT pg_try_advisory_xact_lock(')
    assert trips[-1][2] == "Query" and "SELECT (CASE WHEN" in trips[-1][3]
    assert "::int; COMMIT" in trace.read_text()  # the SQL of a check spans trace lines
    with engine.connect() as c:
        assert c.execute(sa.select(items.c.done).where(items.c.id == 1)).scalar() is True
    with pytest.raises(NotConverged):
        ForgetfulItem().execute([2])
    with engine.connect() as c:
        logged = c.execute(sa.select(sa.func.count()).where(effects.c.item_id == 2)).scalar()
        assert logged == 0, "the non-converged delivery's effect was rolled back"


def test_threads_share_the_compiled_check(pg_settings: Settings, engine: sa.Engine,
                                          compiles: list[Select[Any]]) -> None:
    n = 200
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, n + 1)])
    outcomes: list[str] = []

    def run(keys: range) -> None:
        outcomes.extend(ProcessItem().execute([k]) for k in keys)

    threads = [threading.Thread(target=run, args=(range(t + 1, n + 1, 4),)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("done") == n
    assert 1 <= len(compiles) <= 4, "at most one compilation per racing thread"
