"""Fake mode with ``retries=True`` (issue 13, item 9): a failure is settled by the
worker's own retry rules instead of raising, so an application test can see a job
retried N times, its death hooks run, and a ReconciledJob's key quarantined in the
real database after its last failure."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from reconcile import Job
from reconcile.config import Settings
from reconcile.store import quarantine
from reconcile.testing import fake
from tests.reconciled_app import ProcessItem, items


class Flaky(Job):
    retry = 2
    attempts: ClassVar[list[int]] = []
    exhausted: ClassVar[list[int]] = []

    def perform(self, n: int) -> None:
        Flaky.attempts.append(n)
        raise RuntimeError(f"flaky {n}")

    @classmethod
    def retries_exhausted(cls, payload: dict[str, Any], exc: BaseException) -> None:
        cls.exhausted.append(payload["args"][0])


class Picky(Job):
    discard_on = (ValueError,)

    def perform(self) -> None:
        raise ValueError("not worth retrying")


class RefusesItems(ProcessItem):
    retry = 2

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        raise RuntimeError(f"cannot ship {item_id}")


def test_a_failing_job_runs_retry_plus_one_times_then_dies(settings: Settings) -> None:
    Flaky.attempts.clear()
    Flaky.exhausted.clear()
    with fake(retries=True) as jobs:
        Flaky.perform_async(7)
        assert jobs.drain(Flaky) == 3  # no exception: the failures were settled
        assert Flaky.attempts == [7, 7, 7] and Flaky.exhausted == [7]
        [dead] = jobs.dead
        assert dead["retry_count"] == 2 and dead["error_message"] == "flaky 7"
        assert "raise RuntimeError" in dead["error_backtrace"]
        assert len(jobs) == 0


def test_discard_on_discards_and_without_retries_the_failure_propagates(settings: Settings) -> None:
    with fake(retries=True) as jobs:
        Picky.perform_async()
        jobs.drain(Picky)
        assert [p["class"] for p in jobs.discarded] == [Picky.job_name] and jobs.dead == []
        assert "retry_count" not in jobs.discarded[0]  # discarded at once, no retry spent
    with fake() as jobs:
        Flaky.perform_async(1)
        with pytest.raises(RuntimeError, match="flaky 1"):
            jobs.drain(Flaky)


def test_a_reconciled_key_is_quarantined_after_its_last_failure(
    pg_settings: Settings, app_engine: sa.Engine,
) -> None:
    with app_engine.begin() as conn:
        conn.execute(items.insert().values(id=5))
    with fake(retries=True) as jobs:
        RefusesItems.perform_async(5)
        assert jobs.drain(RefusesItems) == 3
        [dead] = jobs.dead
        assert dead["retry_count"] == 2
    [entry] = quarantine.list_entries(app_engine, RefusesItems.job_name)
    assert entry.key == (5,) and entry.error_message == "cannot ship 5"
    assert RefusesItems.status(5)["verdict"] == "quarantined"
