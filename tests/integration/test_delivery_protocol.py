"""The delivery protocol, specified once and run over both delivery transactions.

``ReconciledJob._execute`` drives a :class:`reconcile.store.delivery.DeliveryTx`: the
reference (``SessionDelivery``, plain SQLAlchemy, ``fast_paths = false``) or the fast
one (``DriverDelivery``, the driver connection, the default). Every scenario of the
protocol runs over both and must give the same outcome and the same rows: done,
already done, lock busy, not converged, a perform that commits (ProtocolViolation), a
lost database, a prepared check deallocated during perform (the fast path's CheckGone,
invisible to the caller), a class's own ``is_pending``, and the watchdog's backend
pid. A hypothesis test then replays random deliveries over random rows on both and
compares everything.

Every test runs on the real PostgreSQL (own schema) and Redis (own namespace).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from reconcile import ReconciledJob, registry
from reconcile.config import Settings, use_settings
from reconcile.errors import NotConverged, ProtocolViolation
from reconcile.outcome import Outcome
from reconcile.store import pending as pending_sql
from reconcile.store import prepared
from reconcile.store.engine import holding_connections
from tests.reconciled_app import effects, items


class _Item(ReconciledJob):
    """Logs an effect and marks the item done; subclasses change one thing."""

    abstract = True
    every = 3600
    queue = "protocol"
    retry = 0

    def pending(self) -> Select[Any]:
        return sa.select(items.c.id).where(items.c.done.is_(False))

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        session.execute(effects.insert().values(item_id=item_id))
        session.execute(items.update().where(items.c.id == item_id).values(done=True))


class _Forgetful(_Item):
    """Logs the effect, never marks the item done."""

    abstract = True

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        session.execute(effects.insert().values(item_id=item_id))


class _Committing(_Item):
    """Does its work, then commits the session itself."""

    abstract = True

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        super().perform(session, item_id)
        session.commit()


class _Terminated(_Item):
    """Its backend is terminated in the middle of perform (as by a PostgreSQL restart)."""

    abstract = True

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        session.execute(effects.insert().values(item_id=item_id))
        session.execute(sa.select(sa.func.pg_terminate_backend(sa.func.pg_backend_pid())))


class _Savepoint(_Item):
    """Rolls a savepoint back, on a connection where psycopg holds a prepared statement
    of its own: psycopg then deallocates every prepared statement, the fast path's
    commit check included."""

    abstract = True
    runs: ClassVar[int] = 0

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        type(self).runs += 1
        driver: Any = session.connection().connection.driver_connection
        driver.execute("SELECT 1", prepare=True)
        nested = session.begin_nested()
        session.execute(effects.insert().values(item_id=item_id))
        nested.rollback()
        session.execute(items.update().where(items.c.id == item_id).values(done=True))


class _OwnCheck(_Item):
    """Overrides ``is_pending`` (counting its calls)."""

    abstract = True
    calls: ClassVar[int] = 0

    def is_pending(self, session: Session, *key: Any) -> bool:
        type(self).calls += 1
        done = session.execute(sa.select(items.c.done).where(items.c.id == key[0])).scalar()
        return done is False


class _Timed(_Item):
    """Has a ``timeout``: the delivery records its backend pid for the watchdog."""

    abstract = True
    timeout = 30.0
    seen_pid: ClassVar[int | None] = None

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        type(self).seen_pid = session.execute(sa.select(sa.func.pg_backend_pid())).scalar()
        super().perform(session, item_id)


JOBS = {"Item": _Item, "Forgetful": _Forgetful, "Committing": _Committing, "Terminated": _Terminated,
        "Savepoint": _Savepoint, "OwnCheck": _OwnCheck, "Timed": _Timed}


@pytest.fixture
def jobs() -> Iterator[dict[str, type[_Item]]]:
    """Concrete job classes for this test, unregistered afterwards (other tests'
    passes and flushes never see them)."""
    made = {name: type(name, (base,), {"__module__": __name__}) for name, base in JOBS.items()}
    yield made
    for cls in made.values():
        registry.unregister(cls.job_name)
    prepared.switched_off.clear()
    prepared.commit_as_sql.clear()


@pytest.fixture(params=[True, False], ids=["fast", "reference"])
def fast_paths(request: pytest.FixtureRequest, pg_settings: Settings, app_engine: sa.Engine) -> bool:
    """Both delivery transactions, chosen by the setting."""
    use_settings(pg_settings.with_overrides(fast_paths=request.param))
    return bool(request.param)


@pytest.fixture
def seen_by_sqlalchemy(app_engine: sa.Engine) -> Iterator[list[str]]:
    """Statements that went through SQLAlchemy's execution (the fast path's own
    statements do not)."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(app_engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(app_engine, "before_cursor_execute", record)


def rows(engine: sa.Engine) -> tuple[list[tuple[Any, ...]], list[int]]:
    """(items as (id, done), effect item ids), sorted: the protocol's whole effect."""
    with engine.connect() as c:
        state = [tuple(r) for r in c.execute(sa.select(items.c.id, items.c.done).order_by(items.c.id))]
        logged = sorted(c.execute(sa.select(effects.c.item_id)).scalars())
    return state, logged


def add(engine: sa.Engine, *ids: int, done: bool = False) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i, "done": done} for i in ids])


def test_done_commits_the_effect_and_the_reference_runs_through_sqlalchemy(
    fast_paths: bool, jobs: dict[str, type[_Item]], app_engine: sa.Engine, seen_by_sqlalchemy: list[str]
) -> None:
    add(app_engine, 1)
    assert jobs["Item"]().execute([1]) is Outcome.DONE
    assert rows(app_engine) == ([(1, True)], [1])
    locks = [s for s in seen_by_sqlalchemy if "pg_try_advisory_xact_lock" in s]
    # the setting really switches the path: the reference's lock is a SQLAlchemy statement
    assert len(locks) == (0 if fast_paths else 1)


def test_a_key_no_longer_pending_is_already_done_without_perform(
    fast_paths: bool, jobs: dict[str, type[_Item]], app_engine: sa.Engine
) -> None:
    add(app_engine, 1, done=True)
    assert jobs["Item"]().execute([1]) is Outcome.ALREADY_DONE
    assert rows(app_engine) == ([(1, True)], [])


def test_a_lock_held_by_another_transaction_is_lock_busy(
    fast_paths: bool, jobs: dict[str, type[_Item]], app_engine: sa.Engine
) -> None:
    add(app_engine, 1)
    job = jobs["Item"]
    with app_engine.connect() as other, other.begin():
        assert pending_sql.try_key_lock(other, job.job_name, [1])
        assert job().execute([1]) is Outcome.LOCK_BUSY
    assert rows(app_engine) == ([(1, False)], [])
    assert job().execute([1]) is Outcome.DONE, "the lock is free again once the other ends"


def test_a_perform_that_leaves_the_key_pending_raises_not_converged_and_rolls_back(
    fast_paths: bool, jobs: dict[str, type[_Item]], app_engine: sa.Engine
) -> None:
    add(app_engine, 1)
    with pytest.raises(NotConverged, match="still pending"):
        jobs["Forgetful"]().execute([1])
    assert rows(app_engine) == ([(1, False)], [])


def test_a_perform_that_commits_is_a_protocol_violation_and_commits_nothing(
    fast_paths: bool, jobs: dict[str, type[_Item]], app_engine: sa.Engine
) -> None:
    add(app_engine, 1)
    with pytest.raises(ProtocolViolation, match="perform must not commit"):
        jobs["Committing"]().execute([1])
    assert rows(app_engine) == ([(1, False)], [])


@pytest.mark.parametrize("held", [False, True], ids=["own session", "held connection"])
def test_a_lost_database_is_db_unavailable_and_the_next_delivery_runs(
    fast_paths: bool, held: bool, jobs: dict[str, type[_Item]], app_engine: sa.Engine
) -> None:
    add(app_engine, 1)
    with holding_connections() if held else contextlib.nullcontext():
        assert jobs["Terminated"]().execute([1]) is Outcome.DB_UNAVAILABLE
        assert rows(app_engine) == ([(1, False)], [])
        assert jobs["Item"]().execute([1]) is Outcome.DONE, "a new connection serves the next one"
    assert rows(app_engine) == ([(1, True)], [1])


def test_a_savepoint_rollback_in_perform_still_converges_once(
    fast_paths: bool, jobs: dict[str, type[_Item]], app_engine: sa.Engine
) -> None:
    """The fast path's commit check is deallocated by the savepoint's rollback: its
    delivery runs again at once (CheckGone, nothing committed); the reference has no
    prepared check. Either way the caller sees one ``done`` and one effect's worth."""
    add(app_engine, 1, 2)
    job = jobs["Savepoint"]
    assert job().execute([1]) is Outcome.DONE
    assert job.runs == (2 if fast_paths else 1)
    assert job().execute([2]) is Outcome.DONE
    assert job.runs == (3 if fast_paths else 2), "then the check commits as SQL: one run each"
    assert rows(app_engine) == ([(1, True), (2, True)], [])


def test_an_overridden_is_pending_is_asked_before_and_after_perform(
    fast_paths: bool, jobs: dict[str, type[_Item]], app_engine: sa.Engine
) -> None:
    add(app_engine, 1)
    job = jobs["OwnCheck"]
    assert job().execute([1]) is Outcome.DONE
    assert job.calls == 2
    assert job().execute([1]) is Outcome.ALREADY_DONE
    assert job.calls == 3
    assert rows(app_engine) == ([(1, True)], [1])


def test_a_job_with_a_timeout_records_its_backend_pid_for_the_watchdog(
    fast_paths: bool, jobs: dict[str, type[_Item]], app_engine: sa.Engine
) -> None:
    add(app_engine, 1)
    job = jobs["Timed"]()
    assert job.execute([1]) is Outcome.DONE
    assert job.backend_pid is not None and job.backend_pid == jobs["Timed"].seen_pid


KINDS = ("Item", "Forgetful", "OwnCheck")


def replay(engine: sa.Engine, jobs: dict[str, type[_Item]], fast: bool, pg_settings: Settings,
           start: dict[int, bool], deliveries: list[tuple[str, int]]) -> tuple[list[str], Any]:
    """Reset the tables to ``start`` (id -> done), run ``deliveries`` with the setting
    ``fast_paths = fast``; (outcomes, final rows)."""
    use_settings(pg_settings.with_overrides(fast_paths=fast))
    with engine.begin() as c:
        c.execute(effects.delete())
        c.execute(items.delete())
        if start:
            c.execute(items.insert(), [{"id": i, "done": d} for i, d in start.items()])
    outcomes = []
    for kind, key in deliveries:
        try:
            outcomes.append(str(jobs[kind]().execute([key])))
        except NotConverged:
            outcomes.append("not_converged")
    return outcomes, rows(engine)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.dictionaries(st.integers(1, 6), st.booleans(), max_size=6),
    deliveries=st.lists(st.tuples(st.sampled_from(KINDS), st.integers(1, 7)), min_size=1, max_size=8),
)
def test_random_deliveries_have_the_same_outcomes_and_rows_on_both_paths(
    pg_settings: Settings, app_engine: sa.Engine, jobs: dict[str, type[_Item]],
    start: dict[int, bool], deliveries: list[tuple[str, int]],
) -> None:
    """Rows pending, done or missing (key 7 never exists), delivered by a correct job,
    a forgetful one and one with its own check, in any order and repeated."""
    fast = replay(app_engine, jobs, True, pg_settings, start, deliveries)
    reference = replay(app_engine, jobs, False, pg_settings, start, deliveries)
    assert fast == reference
