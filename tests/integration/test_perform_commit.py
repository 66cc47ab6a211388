"""The no-commit rule: a ReconciledJob's perform must not end the delivery's transaction.

The delivery commits after step 4's re-check; a perform that commits, rolls back or
closes its session gets a ProtocolViolation naming the rule, its effect is rolled back
(not committed behind the protocol's back), and the delivery fails under the retry
rules like any exception. Ends of the transaction the Session cannot intercept (a
COMMIT through the connection or as SQL) are detected when perform returns.

Every test runs on the real PostgreSQL (own schema) and Redis (own namespace).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from reconcile import ReconciledJob, registry
from reconcile.broker import Broker, SettleKind
from reconcile.config import Settings
from reconcile.errors import ProtocolViolation
from reconcile.store.engine import NO_COMMIT_RULE, holding_connections
from reconcile.worker.executor import Executor
from tests.reconciled_app import effects, items

RULE = "perform must not commit; the delivery commits after the re-check"


class _Misbehaving(ReconciledJob):
    """Logs an effect, marks the item done, then does what ``act`` says to its session.
    Abstract here: each test registers a concrete subclass (``Misbehaving``) and removes
    it afterwards, so other tests' passes and flushes never see it."""

    abstract = True
    every = 3600
    queue = "misbehaving"
    retry = 3
    act: ClassVar[Callable[[Session], Any]] = staticmethod(lambda s: None)

    def pending(self) -> Select[Any]:
        return sa.select(items.c.id).where(items.c.done.is_(False))

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        session.execute(effects.insert().values(item_id=item_id))
        session.execute(items.update().where(items.c.id == item_id).values(done=True))
        type(self).act(session)


Misbehaving: type[_Misbehaving]


@pytest.fixture(autouse=True)
def misbehaving() -> Iterator[None]:
    global Misbehaving
    Misbehaving = type("Misbehaving", (_Misbehaving,), {})
    yield
    registry.unregister(Misbehaving.job_name)


@pytest.fixture
def engine(app_engine: sa.Engine) -> sa.Engine:
    with app_engine.begin() as c:
        c.execute(items.insert(), [{"id": 1}])
    return app_engine


@pytest.fixture(params=["own session", "held connection"])
def held(request: pytest.FixtureRequest) -> Any:
    """Both ways a delivery gets its Session: a new one, or the executor thread's."""
    if request.param == "own session":
        yield
    else:
        with holding_connections():
            yield


def effect_rows(engine: sa.Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(effects)).scalar_one())


def catching(call: Callable[[Session], Any]) -> Callable[[Session], Any]:
    def act(session: Session) -> None:
        with contextlib.suppress(Exception):  # the point: a perform that swallows the error
            call(session)
    return act


def test_the_rule_is_stated_once() -> None:
    assert NO_COMMIT_RULE == RULE


@pytest.mark.parametrize("act", [
    lambda s: s.commit(), lambda s: s.rollback(), lambda s: s.close(),
    catching(lambda s: s.commit()),
], ids=["commit", "rollback", "close", "commit, error swallowed"])
def test_commit_rollback_or_close_in_perform_is_refused_and_nothing_committed(
    pg_settings: Settings, engine: sa.Engine, held: None, act: Callable[[Session], Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Misbehaving, "act", staticmethod(act))
    with pytest.raises(ProtocolViolation, match=RULE) as info:
        Misbehaving().execute([1])
    assert "session." in str(info.value), "names the call"
    assert effect_rows(engine) == 0, "the effect was rolled back, not committed"
    monkeypatch.setattr(Misbehaving, "act", staticmethod(lambda s: None))
    assert Misbehaving().execute([1]) == "done", "the session works for the next delivery"
    assert effect_rows(engine) == 1


def test_a_savepoint_is_fine(pg_settings: Settings, engine: sa.Engine, held: None,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    def nested(session: Session) -> None:
        with session.begin_nested():
            session.execute(effects.insert().values(item_id=99))
        savepoint = session.begin_nested()
        session.execute(effects.insert().values(item_id=98))
        savepoint.rollback()

    monkeypatch.setattr(Misbehaving, "act", staticmethod(nested))
    assert Misbehaving().execute([1]) == "done"
    assert effect_rows(engine) == 2, "the released savepoint's row and perform's own"


@pytest.mark.filterwarnings("ignore:transaction already deassociated from connection")
@pytest.mark.parametrize("act", [
    lambda s: s.connection().commit(),
    lambda s: s.execute(sa.text("COMMIT")),
    lambda s: s.execute(sa.text("ROLLBACK")),
], ids=["connection().commit()", "COMMIT as SQL", "ROLLBACK as SQL"])
def test_ending_the_transaction_behind_the_session_is_detected(
    pg_settings: Settings, engine: sa.Engine, held: None, act: Callable[[Session], Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Misbehaving, "act", staticmethod(act))
    with pytest.raises(ProtocolViolation, match=RULE):
        Misbehaving().execute([1])
    monkeypatch.setattr(Misbehaving, "act", staticmethod(lambda s: None))
    outcome = Misbehaving().execute([1])
    # a COMMIT made the effect durable without the re-check: the next delivery finds
    # the key done; a ROLLBACK undid it, and the next delivery does the work
    assert (outcome, effect_rows(engine)) in (("already_done", 1), ("done", 1))


def test_the_delivery_fails_under_the_retry_rules(
    pg_settings: Settings, engine: sa.Engine, broker: Broker, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Misbehaving, "act", staticmethod(lambda s: s.commit()))
    Misbehaving.perform_async(1)
    got = broker.exchange("test-proc", ["misbehaving"], 1)
    op = Executor(pg_settings, broker).run(got[0])
    assert op.kind is SettleKind.RETRY, "retry = 3: retried like any failure"
    assert b"ProtocolViolation" in op.payload and RULE.encode() in op.payload
    assert effect_rows(engine) == 0
