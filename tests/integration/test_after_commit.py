"""``perform_after_commit``: a job enqueued with a Session waits for its commit, and a
rollback (of the transaction or of the savepoint it was registered in) drops it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from reconcile import ArgumentError, Job
from reconcile.broker import Broker
from reconcile.config import Settings


class Notify(Job):
    name = "ac.Notify"

    def perform(self, order_id: int) -> None: ...


class Audit(Job):
    name = "ac.Audit"

    def perform(self, what: str) -> None: ...


@pytest.fixture
def session(pg_settings: Settings, engine: sa.Engine) -> Iterator[Session]:
    with Session(engine) as s:
        yield s


def queued(broker: Broker, queue: str = "default") -> list[tuple[str, list[object]]]:
    return [(j["class"], j["args"]) for j in map(orjson.loads, broker.queue_entries(queue))]


def test_the_job_is_enqueued_when_the_transaction_commits_not_before(
    session: Session, broker: Broker
) -> None:
    session.execute(sa.text("SELECT 1"))
    assert Notify.perform_after_commit(session, 7) is None
    Audit.perform_after_commit(session, "paid")
    Notify.perform_after_commit(session, 8)
    assert queued(broker) == [], "nothing before the commit"
    session.commit()
    assert queued(broker) == [("ac.Notify", [7]), ("ac.Audit", ["paid"]), ("ac.Notify", [8])]


def test_a_rollback_drops_the_job(session: Session, broker: Broker) -> None:
    session.execute(sa.text("SELECT 1"))
    Notify.perform_after_commit(session, 1)
    session.rollback()
    session.execute(sa.text("SELECT 1"))
    session.commit()
    assert queued(broker) == [], "dropped, and not resurrected by the next commit"


def test_closing_without_commit_drops_the_job(pg_settings: Settings, engine: sa.Engine,
                                              broker: Broker) -> None:
    with Session(engine) as s:
        s.execute(sa.text("SELECT 1"))
        Notify.perform_after_commit(s, 2)
    assert queued(broker) == []


def test_a_rolled_back_savepoint_drops_only_its_jobs(session: Session, broker: Broker) -> None:
    session.execute(sa.text("SELECT 1"))
    Notify.perform_after_commit(session, 1)
    kept = session.begin_nested()
    Notify.perform_after_commit(session, 2)
    kept.commit()
    failed = session.begin_nested()
    Notify.perform_after_commit(session, 3)
    inner = session.begin_nested()
    Notify.perform_after_commit(session, 4)
    inner.commit()
    failed.rollback()
    Notify.perform_after_commit(session, 5)
    assert queued(broker) == []
    session.commit()
    assert queued(broker) == [("ac.Notify", [1]), ("ac.Notify", [2]), ("ac.Notify", [5])]


def test_before_the_transaction_begins_the_job_waits_for_its_commit(
    session: Session, broker: Broker
) -> None:
    assert not session.in_transaction()
    Notify.perform_after_commit(session, 9)  # then the writes the job is about
    session.execute(sa.text("SELECT 1"))
    assert queued(broker) == []
    session.commit()
    assert queued(broker) == [("ac.Notify", [9])]
    Notify.perform_after_commit(session, 10)
    session.execute(sa.text("SELECT 1"))
    session.rollback()
    session.execute(sa.text("SELECT 1"))
    session.commit()
    assert queued(broker) == [("ac.Notify", [9])], "registered before a rolled-back one: dropped"


def test_a_bad_argument_fails_at_the_call(session: Session, broker: Broker) -> None:
    session.execute(sa.text("SELECT 1"))
    with pytest.raises(ArgumentError, match="order_id"):
        Notify.perform_after_commit(session, {1, 2})
    session.commit()
    assert queued(broker) == []


def test_options_of_set_apply(session: Session, broker: Broker) -> None:
    session.execute(sa.text("SELECT 1"))
    Notify.set(queue="critical").perform_after_commit(session, 3)
    session.commit()
    assert queued(broker, "critical") == [("ac.Notify", [3])] and queued(broker) == []


def test_redis_down_at_commit_is_logged_and_the_commit_stands(
    pg_settings: Settings, engine: sa.Engine, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    from reconcile.config import use_settings

    with engine.begin() as c:
        c.execute(sa.text("CREATE TABLE marks (id int)"))
    down = pg_settings.with_overrides(redis_url="redis://127.0.0.1:1/0")
    use_settings(down)
    try:
        with Session(engine) as s, caplog.at_level(logging.ERROR, "reconcile.after_commit"):
            s.execute(sa.text("INSERT INTO marks VALUES (1)"))
            Notify.perform_after_commit(s, 4)
            s.commit()
    finally:
        use_settings(pg_settings)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM marks")).scalar() == 1, "committed"
    assert "1 ac.Notify jobs could not be enqueued after the commit" in caplog.text
    assert "[(4,)]" in caplog.text


def test_committing_with_a_savepoint_open_enqueues_its_jobs(session: Session, broker: Broker) -> None:
    session.execute(sa.text("SELECT 1"))
    session.begin_nested()
    Notify.perform_after_commit(session, 6)
    session.commit()  # releases the savepoint, then commits
    assert queued(broker) == [("ac.Notify", [6])]


def test_a_session_used_again_after_commit_defers_again(session: Session, broker: Broker) -> None:
    for n in (1, 2):
        session.execute(sa.text("SELECT 1"))
        Notify.perform_after_commit(session, n)
        assert len(queued(broker)) == n - 1
        session.commit()
    assert queued(broker) == [("ac.Notify", [1]), ("ac.Notify", [2])]
