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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from psycopg import pq
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.sql import Select
from sqlalchemy.types import TypeDecorator

from reconcile import ReconciledJob, keys
from reconcile.config import Settings, use_settings
from reconcile.errors import NotConverged
from reconcile.store import driver_tx, prepared
from reconcile.store import key_check as key_checks
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


class Untyped(ReconciledJob):
    """``pending()`` binds a value of no type PostgreSQL can infer (``:flag IS NULL``):
    its check cannot be prepared, so it is sent as SQL."""

    every = 3600
    queue = "fast"

    def pending(self) -> Select[Any]:
        return sa.select(items.c.id).where(
            items.c.done.is_(False), sa.text(":flag IS NULL").bindparams(flag=None))

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        session.execute(items.update().where(items.c.id == item_id).values(done=True))


class SavepointItem(ReconciledJob):
    """perform rolls a savepoint back, on a connection where psycopg holds a prepared
    statement of its own (as any connection does once a statement ran 5 times)."""

    every = 3600
    queue = "fast"
    runs: ClassVar[int] = 0

    def pending(self) -> Select[Any]:
        return sa.select(items.c.id).where(items.c.done.is_(False))

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        SavepointItem.runs += 1
        driver = session.connection().connection.driver_connection
        driver.execute("SELECT 1", prepare=True)  # type: ignore[union-attr]
        nested = session.begin_nested()
        session.execute(effects.insert().values(item_id=item_id))
        nested.rollback()
        session.execute(items.update().where(items.c.id == item_id).values(done=True))


@pytest.fixture(autouse=True)
def prepared_state() -> Iterator[None]:
    """Prepared checks switched off, or refused, in one test stay so only there."""
    yield
    prepared.switched_off.clear()
    prepared.unpreparable.clear()
    prepared.commit_as_sql.clear()


@pytest.fixture
def engine(app_engine: sa.Engine) -> Iterator[sa.Engine]:
    fast_metadata.create_all(app_engine)
    yield app_engine


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[Select[Any]]:
    """The pending statement of every compilation of a key check."""
    seen: list[Select[Any]] = []
    real = key_checks.compile_key_check

    def counting(stmt: Select[Any], dialect: sa.Dialect, values: Any) -> key_checks.KeyCheck:
        seen.append(stmt)
        return real(stmt, dialect, values)

    monkeypatch.setattr(key_checks, "compile_key_check", counting)
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
    monkeypatch.setattr(key_checks, "REVERIFY_SECONDS", 3600.0)
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, 21)])
    Shaped.even_only, Shaped.calls = False, 0
    keys.forget(Shaped)  # its column types are read once more, whatever ran before
    outcomes = [Shaped().execute([i]) for i in range(1, 21)] + [Shaped().execute([1])]
    assert outcomes == ["done"] * 20 + ["already_done"]
    assert len(compiles) == 1, "one compilation for 21 deliveries"
    # one call reads the key's column types (reconcile.keys), one is compiled
    assert Shaped.calls == 2, "a pending() that binds no value is not called again"


def test_a_pending_query_that_changes_structure_is_recompiled(
    pg_settings: Settings, engine: sa.Engine, compiles: list[Select[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(key_checks, "REVERIFY_SECONDS", 0.0)  # compare structures at every delivery
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
    keys.forget(UpTo)  # its column types are read once more, whatever ran before
    try:
        assert UpTo().execute([1]) == "done"
        UpTo.limit = 2
        assert UpTo().execute([3]) == "already_done", "3 > the current limit: not pending"
        assert UpTo().execute([2]) == "done"
    finally:
        UpTo.limit = 10
    assert len(compiles) == 1, "the values change, not the compiled statement"
    # once per delivery (both checks of a delivery see the same values), plus the one
    # call that reads the key's column types (reconcile.keys)
    assert UpTo.calls == 4, "once per delivery: both checks of a delivery see the same values"


def test_a_check_the_driver_cannot_take_runs_through_sqlalchemy(
    pg_settings: Settings, engine: sa.Engine
) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, 6)])
    check = key_checks.delivery_check(InList, InList().pending, engine.dialect, [2])
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
    real = driver_tx.DriverTx.open_delivery
    killed: list[int] = []

    def terminated_first(self: driver_tx.DriverTx, *args: Any) -> tuple[bool, bool | None]:
        if not killed:
            killed.append(self.backend_pid)
            assert pending_sql.terminate_backend(engine, self.backend_pid)
        return real(self, *args)

    monkeypatch.setattr(driver_tx.DriverTx, "open_delivery", terminated_first)
    assert ProcessItem().execute([1]) == "db_unavailable"
    assert ProcessItem().execute([1]) == "done", "the pool replaced the dead connection"


def test_a_failed_driver_statement_is_a_sqlalchemy_error_and_the_connection_stays_usable(
    pg_settings: Settings, engine: sa.Engine
) -> None:
    with engine.connect() as conn:
        with pytest.raises(DBAPIError) as err, conn.begin():
            driver_tx.DriverTx(conn)._scalar("SELECT 1 / %s", (0,))
        assert getattr(err.value.orig, "sqlstate", None) == "22012"
        assert not err.value.connection_invalidated
        with conn.begin():  # SQLAlchemy closed the failed cursor: a new one is used
            assert driver_tx.DriverTx(conn).try_lock(42)


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
            tx = driver_tx.DriverTx(conn)
            # libpq's protocol trace: every Query (simple) or Sync (extended) message the
            # client sends ends a round trip
            with trace.open("w") as f:
                driver.pgconn.trace(f.fileno())
                driver.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
                try:
                    assert tx.open_delivery(pending_sql.lock_id("bench.ProcessItem", [1])) == (True, None)
                finally:
                    driver.pgconn.untrace()
            assert driver.info.transaction_status == pq.TransactionStatus.INTRANS
        sent = [line.split("\t") for line in trace.read_text().splitlines()]
        trips = [m for m in sent if m[0] == "F" and m[2] in ("Query", "Sync")]
        print(f"\nstep 1 sent {len(trips)} round trip(s): {trips[0][3:] if trips else []}")
        assert len(trips) == 1 and "BEGIN; SELECT (CASE WHEN pg_try_advisory_xact_lock(" in trips[0][3]
    assert driver.autocommit is False, "switched back at checkin"
    with engine.connect() as conn:  # the same pooled connection: transactional again
        conn.execute(items.update().where(items.c.id == 2).values(done=True))
        conn.rollback()
    with engine.connect() as conn:
        assert conn.execute(sa.select(items.c.done).where(items.c.id == 2)).scalar() is False


def traced_deliveries(engine: sa.Engine, path: Path, run: Callable[[], Any]) -> tuple[Any, str, int]:
    """``run()`` with a libpq trace of every connection it checks out: (its result, the
    trace, how many distinct connections)."""
    files: list[Any] = []
    seen: set[int] = set()

    def start(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        seen.add(id(dbapi_conn))
        f = path.open("a")
        files.append(f)
        dbapi_conn.pgconn.trace(f.fileno())
        dbapi_conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)

    def stop(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.pgconn.untrace()

    sa.event.listen(engine, "checkout", start)
    sa.event.listen(engine, "checkin", stop)
    try:
        result = run()
    finally:
        sa.event.remove(engine, "checkout", start)
        sa.event.remove(engine, "checkin", stop)
        for f in files:
            f.close()
    return result, path.read_text(), len(seen)


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "as-sql"])
def test_a_delivery_adds_two_round_trips_to_performs_own(
    pg_settings: Settings, engine: sa.Engine, tmp_path: Path, prepared: bool
) -> None:
    """BEGIN, the lock and the first check go together (steps 1 and 2: the check is a
    statement of its own, so its snapshot follows the lock), and the second check with
    COMMIT (steps 4 and 5), so a delivery adds 2 round trips to perform's own
    statements; a non-converging perform still ends in NotConverged, rolled back. With
    ``prepared_checks`` (the default) both checks are EXECUTEs of statements prepared
    once per connection, before the delivery's first round trip; without, SQL."""
    use_settings(pg_settings.with_overrides(prepared_checks=prepared))
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": 1}, {"id": 2}])
    outcome, text, _ = traced_deliveries(engine, tmp_path / "libpq.trace",
                                         lambda: ProcessItem().execute([1]))
    assert outcome == "done"
    sent = [line.split("\t") for line in text.splitlines()]
    # a simple Query, or the Sync that ends an extended-protocol statement, is a round
    # trip; counted from the delivery's first (the switch cache may read its table first)
    trips = [m for m in sent if m[0] == "F" and len(m) > 2 and m[2] in ("Query", "Sync")]
    first = next(i for i, m in enumerate(trips) if "pg_try_advisory_xact_lock" in m[-1])
    trips = trips[first:]
    print(f"\na delivery of ProcessItem (perform: 2 statements) took {len(trips)} round trips")
    assert len(trips) == 4, trips
    assert trips[0][3].startswith(' "BEGIN; SELECT (CASE WHEN pg_try_advisory_xact_lock(')
    assert trips[-1][2] == "Query"
    if prepared:
        assert "; EXECUTE reconcile_" in trips[0][3], "the first check rides with the lock"
        assert "EXECUTE reconcile_" in trips[-1][3] and "_c(1); COMMIT" in trips[-1][3]
        assert text.count("PREPARE reconcile_") == 2, "prepared once, before"
    else:
        assert "; SELECT EXISTS (SELECT 1" in trips[0][3], "the first check rides with the lock"
        assert "SELECT (CASE WHEN" in trips[-1][3]
        assert "::int; COMMIT" in text  # the SQL of a check spans trace lines
        assert "PREPARE" not in text
    with engine.connect() as c:
        assert c.execute(sa.select(items.c.done).where(items.c.id == 1)).scalar() is True
    with pytest.raises(NotConverged):
        ForgetfulItem().execute([2])
    with engine.connect() as c:
        logged = c.execute(sa.select(sa.func.count()).where(effects.c.item_id == 2)).scalar()
        assert logged == 0, "the non-converged delivery's effect was rolled back"


def test_the_check_after_the_lock_sees_what_the_lock_holder_committed(
    pg_settings: Settings, engine: sa.Engine
) -> None:
    """What steps 1 and 2 in one simple query rely on: under READ COMMITTED, a
    statement of a simple query takes its snapshot when it starts, so the check (the
    statement after the lock's) sees a commit made while the lock was being acquired.
    Shown with the blocking lock, which makes the window wide enough to hold open: the
    other transaction marks the key done under the lock and commits only once our query
    waits for that lock; our check must then find the key no longer pending."""
    import psycopg

    with engine.begin() as c:
        c.execute(items.insert(), [{"id": 1}])
    lock = pending_sql.lock_id(ProcessItem.job_name, [1])
    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    holder = psycopg.connect(dsn)
    ours = psycopg.connect(dsn, autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
        holder.execute("UPDATE items SET done = true WHERE id = 1")
        result: list[Any] = []

        def deliver() -> None:
            cur = ours.execute(f"BEGIN; SELECT pg_advisory_xact_lock({lock}); "
                               "SELECT EXISTS (SELECT 1 FROM items WHERE id = 1 AND NOT done)")
            cur.nextset()
            cur.nextset()
            result.append(cur.fetchone())
            ours.execute("ROLLBACK")

        t = threading.Thread(target=deliver)
        t.start()
        with engine.connect() as watch:  # our query is waiting for the lock
            for _ in range(500):
                waiting = watch.execute(sa.text(
                    "SELECT count(*) FROM pg_locks WHERE pid = :pid AND locktype = 'advisory' "
                    "AND NOT granted"), {"pid": ours.info.backend_pid}).scalar()
                if waiting:
                    break
                threading.Event().wait(0.01)
            assert waiting == 1, "our query never waited for the lock"
        holder.commit()
        t.join(10)
        assert result == [(False,)], "the check saw the key as pending: a stale snapshot"
    finally:
        holder.close()
        ours.close()


def test_step_one_carries_the_timeouts_and_a_check_with_quotes_and_percents(
    pg_settings: Settings, engine: sa.Engine
) -> None:
    """The key is bound into the one simple query by psycopg's adapters: quotes and
    percent signs in a text key neither break nor change the check."""
    names = ["5%'x", "%s", "a''b%%"]
    with engine.begin() as c:
        c.execute(tags.insert(), [{"name": n, "done": False} for n in names])
    assert [SyncTag().execute([n]) for n in names] == ["done"] * 3
    assert [SyncTag().execute([n]) for n in names] == ["already_done"] * 3
    assert SyncTag().execute(["5%'y"]) == "already_done", "an unknown key is not pending"
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": 1}])
    assert Timed().execute([1]) == "done"
    assert Timed.seen["statement"] == Timed.seen["idle"] == "1500ms"


def test_checks_are_prepared_once_per_connection(
    pg_settings: Settings, engine: sa.Engine, tmp_path: Path
) -> None:
    n = 30
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, n + 1)])
    outcomes, trace, connections = traced_deliveries(
        engine, tmp_path / "trace",
        lambda: [ProcessItem().execute([k]) for k in (*range(1, n + 1), 1)])
    assert outcomes == ["done"] * n + ["already_done"]
    prepares = trace.count('"PREPARE reconcile_')
    executes = trace.count("EXECUTE reconcile_")
    print(f"\n{n + 1} deliveries on {connections} connection(s): {prepares} PREPARE, {executes} EXECUTE")
    assert 1 <= prepares <= connections
    assert executes == 2 * n + 1, "both checks of each delivery, the first of the last"
    assert not prepared.switched_off


def test_statements_deallocated_between_deliveries_are_prepared_again(
    pg_settings: Settings, engine: sa.Engine
) -> None:
    """psycopg sends DEALLOCATE ALL after any rollback once it holds prepared statements
    of its own (so do DISCARD ALL and DDL): step 1 finds its statement gone, and the
    worker prepares it again and repeats the step in the same delivery."""
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": 1}, {"id": 2}])
    check = key_checks.delivery_check(ProcessItem, ProcessItem().pending, engine.dialect, [1])
    assert isinstance(check, tuple)
    lock = pending_sql.lock_id(ProcessItem.job_name, [1])
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        assert driver is not None
        assert driver_tx.DriverTx(conn, prepare=True).open_delivery(lock, check) == (True, True)
        driver.rollback()
        driver.execute("DEALLOCATE ALL")
        driver.autocommit = False  # as the pool's checkin hook leaves it for the next delivery
        assert driver_tx.DriverTx(conn, prepare=True).open_delivery(lock, check) == (True, True)
        names = driver.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'reconcile_%'").fetchone()
        assert names == (2,), "prepared again"
        driver.rollback()
    assert not prepared.switched_off


def test_a_busy_lock_ends_step_one_and_keeps_the_prepared_checks(
    pg_settings: Settings, engine: sa.Engine
) -> None:
    """A busy lock stops the simple query at the lock (the check does not run) and the
    transaction is rolled back without psycopg's rollback(), which would deallocate
    every prepared statement of the connection once psycopg holds one of its own."""
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": 1}])
    check = key_checks.delivery_check(ProcessItem, ProcessItem().pending, engine.dialect, [1])
    assert isinstance(check, tuple)
    lock = pending_sql.lock_id(ProcessItem.job_name, [1])
    with engine.connect() as other, other.begin(), engine.connect() as conn:
        assert pending_sql.try_key_lock(other, ProcessItem.job_name, [1])
        driver = conn.connection.driver_connection
        assert driver is not None
        driver.execute("SELECT 1", prepare=True)  # psycopg now holds a statement of its own
        driver.commit()
        assert driver_tx.DriverTx(conn, prepare=True).open_delivery(lock, check) == (False, None)
        assert driver.info.transaction_status == pq.TransactionStatus.IDLE
        ours = driver.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'reconcile_%'").fetchone()
        assert ours == (2,)
        driver.rollback()


def test_a_statement_gone_at_once_switches_prepared_checks_off(
    pg_settings: Settings, engine: sa.Engine, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Behind a pooler in transaction mode the next transaction may run on another
    server connection, where the statement just prepared does not exist: the step runs
    as SQL in the same delivery, and the process stops preparing (logged, naming the
    setting). Simulated with a PREPARE that prepares nothing."""
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": 1}, {"id": 2}])
    real = prepared.prepared_form

    def elsewhere(sql: str) -> prepared.PreparedCheck:
        form = real(sql)
        return prepared.PreparedCheck(form.name, "SELECT 1", form.execute, form.commit, form.order)

    monkeypatch.setattr(driver_tx, "prepared_form", elsewhere)
    with caplog.at_level("WARNING", logger="reconcile.store"):
        assert [ProcessItem().execute([k]) for k in (1, 2, 1)] == ["done", "done", "already_done"]
    assert prepared.switched_off
    assert caplog.text.count("set database_pooler = transaction") == 1


def test_a_perform_that_rolls_back_a_savepoint_still_converges(
    pg_settings: Settings, engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """ROLLBACK TO SAVEPOINT makes psycopg deallocate every prepared statement of the
    connection, the commit check's included, in the middle of the delivery: it runs
    again at once (nothing was committed), and that check commits as SQL from then on."""
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": 1}, {"id": 2}])
    SavepointItem.runs = 0
    with caplog.at_level("INFO", logger="reconcile.reconciled"):
        assert SavepointItem().execute([1]) == "done"
    assert SavepointItem.runs == 2, "the first run's commit check was gone: run again"
    assert "deallocated during perform" in caplog.text
    assert SavepointItem().execute([2]) == "done"
    assert SavepointItem.runs == 3, "commits as SQL now: no second run"
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(effects)).scalar() == 0
        assert c.execute(sa.select(sa.func.count()).where(items.c.done)).scalar() == 2


def test_a_check_postgresql_cannot_prepare_is_sent_as_sql(
    pg_settings: Settings, engine: sa.Engine
) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": 1}, {"id": 2}])
    assert [Untyped().execute([k]) for k in (1, 1, 2)] == ["done", "already_done", "done"]
    assert len(prepared.unpreparable) == 1
    assert not prepared.switched_off, "other checks are still prepared"


def test_a_worker_thread_keeps_its_connection_between_deliveries(
    pg_settings: Settings, engine: sa.Engine
) -> None:
    """Each executor thread checks a connection out for its first delivery and keeps
    it (and its Session) while deliveries follow each other. After PING_AFTER_IDLE
    without a delivery it is checked out again (so pinged), and at stop it goes back."""
    from reconcile.store import engine as engine_module
    from tests.jobs_core import running_worker, wait_for

    n = 300
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, n + 2)])
    checkouts: list[str] = []  # by executor threads

    def count(*_: Any) -> None:
        if threading.current_thread().name.startswith("reconcile-exec"):
            checkouts.append(threading.current_thread().name)

    sa.event.listen(engine, "checkout", count)
    try:
        with running_worker(pg_settings, [ProcessItem.queue], concurrency=2):
            ProcessItem.perform_bulk([[i] for i in range(1, n + 1)])
            wait_for(lambda: items_done(engine) == n, timeout=30, what="all deliveries")
            busy = len(checkouts)
            threading.Event().wait(engine_module.PING_AFTER_IDLE + 0.3)
            before = len(checkouts)
            ProcessItem.perform_async(n + 1)
            wait_for(lambda: items_done(engine) == n + 1, timeout=10, what="the late delivery")
            after_idle = len(checkouts) - before
        left_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    finally:
        sa.event.remove(engine, "checkout", count)
    print(f"\n{n} deliveries on 2 threads: {busy} pool checkouts by executor threads")
    # one per thread, and the kill-switch cache's read if it fell to an executor thread
    assert busy <= 3, f"{busy} checkouts for {n} deliveries"
    assert after_idle >= 1, "checked out again after the idle time (and pinged)"
    assert left_out == 0, "every connection back in the pool after stop"


def items_done(engine: sa.Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).where(items.c.done)).scalar() or 0)


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


@pytest.mark.parametrize(("params", "inlined"), [
    ({"reconcile_key_0": 42}, "EXECUTE {n}(42)"),
    ({"reconcile_key_0": -(2**63), "reconcile_key_1": 7}, "EXECUTE {n}(-9223372036854775808, 7)"),
    ({"reconcile_key_0": "42"}, None),
    ({"reconcile_key_0": True}, None),
    ({"reconcile_key_0": 1.5}, None),
    ({"reconcile_key_0": 1, "reconcile_key_1": None}, None),
], ids=["int", "two ints", "text", "bool", "float", "null"])
def test_integer_keys_are_inlined_and_anything_else_is_bound_by_psycopg(
    params: dict[str, Any], inlined: str | None
) -> None:
    """The prepared checks' EXECUTE: an int's decimal text is its SQL literal, so plain
    int keys are written directly; every other value goes through psycopg's mogrify."""
    names = ", ".join(f"%({k})s" for k in params)
    form = prepared.prepared_form(f"SELECT ({names}) IS NOT NULL")
    assert form.inline(False, params) == (inlined and inlined.format(n=form.name))
    assert form.inline(True, params) == (inlined and inlined.format(n=form.name + "_c"))
