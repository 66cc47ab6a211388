"""``reconcile.testing``'s protocol helpers, used as an application's tests would:
``assert_idempotent`` passes for a job that converges and fails, naming the problem,
for one that does not or that performs twice; ``run_pass`` and ``create_tables``."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from reconcile.config import Settings
from reconcile.testing import assert_idempotent, create_tables, run_pass
from tests.reconciled_app import ForgetfulItem, MarksItemDone, ProcessItem, effects, items


@pytest.fixture
def engine(app_engine: sa.Engine) -> sa.Engine:
    return app_engine


class ClaimsPendingForever(MarksItemDone):
    """Marks the item done but its ``is_pending`` override always says pending: the
    re-check after perform fails (a job that never converges)."""

    def is_pending(self, session: Session, item_id: int) -> bool:  # type: ignore[override]
        return True


class ChecksSomethingElse(ProcessItem):
    """An ``is_pending`` that does not read what perform writes (it alternates): each
    delivery finds the key pending before perform and done after, so every duplicate
    delivery performs again."""

    calls = 0

    def is_pending(self, session: Session, item_id: int) -> bool:  # type: ignore[override]
        type(self).calls += 1
        return type(self).calls % 2 == 1


def seed(engine: sa.Engine, *ids: int) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in ids])


def test_a_job_that_converges_is_idempotent(pg_settings: Settings, engine: sa.Engine) -> None:
    seed(engine, 1)
    assert_idempotent(ProcessItem, 1)
    with engine.connect() as c:  # the first delivery committed, the second did nothing
        assert c.execute(sa.select(sa.func.count()).select_from(effects)).scalar_one() == 1


def test_a_key_given_in_another_spelling_is_the_same_key(pg_settings: Settings, engine: sa.Engine) -> None:
    seed(engine, 3)
    assert_idempotent(ProcessItem, "3")


def test_a_job_that_does_not_converge_fails_with_the_reason(pg_settings: Settings, engine: sa.Engine) -> None:
    seed(engine, 1)
    with pytest.raises(AssertionError,
                       match=r"did not converge: perform returned but the key is still pending"):
        assert_idempotent(ForgetfulItem, 1)


def test_an_override_that_keeps_saying_pending_fails(pg_settings: Settings, engine: sa.Engine) -> None:
    seed(engine, 1)
    with pytest.raises(AssertionError, match="did not converge"):
        assert_idempotent(ClaimsPendingForever, 1)


def test_a_key_that_is_not_pending_is_reported(pg_settings: Settings, engine: sa.Engine) -> None:
    with pytest.raises(AssertionError, match=r"was not pending: set up a pending row first"):
        assert_idempotent(ProcessItem, 99)


def test_run_pass_enqueues_the_pending_keys(pg_settings: Settings, engine: sa.Engine) -> None:
    seed(engine, 1, 2, 3)
    result = run_pass(ProcessItem, settings=pg_settings)
    assert (result.found, result.enqueued, result.trigger) == (3, 3, "manual")


def test_create_tables_makes_the_framework_tables(schema_url: str, pg_schema: str) -> None:
    create_tables(schema_url)
    create_tables(schema_url)  # idempotent
    eng = sa.create_engine(schema_url)
    try:
        names = set(sa.inspect(eng).get_table_names(schema=pg_schema))
    finally:
        eng.dispose()
    assert {"reconcile_schedules", "reconcile_runs", "reconcile_quarantine", "reconcile_switches"} <= names




def test_a_second_delivery_that_performs_again_fails(pg_settings: Settings, engine: sa.Engine) -> None:
    seed(engine, 1)
    with pytest.raises(AssertionError, match=r"a second delivery came to done with 1 performs"):
        assert_idempotent(ChecksSomethingElse, 1)
