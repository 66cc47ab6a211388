"""A schedule whose definition changed: the most recently started scheduler writes its
definition into the shared row (with a WARNING naming both), and a scheduler whose
class says something else stops firing it, and says so, instead of rewriting it back."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from reconcile.broker import get_broker
from reconcile.config import Settings
from reconcile.scheduler.service import Scheduler
from reconcile.store import schedules
from tests.reconciled_app import ProcessItem


@pytest.fixture
def engine(app_engine: sa.Engine) -> sa.Engine:
    return app_engine



def test_a_changed_schedule_follows_the_newest_scheduler_and_the_old_one_stops_firing_it(
    pg_settings: Settings, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    get_broker(pg_settings).set_epoch("established")  # no Redis-loss pass in the way
    monkeypatch.setattr(ProcessItem, "every", 3600)
    old = Scheduler(pg_settings, [ProcessItem])
    old.ensure_schedules()
    monkeypatch.setattr(ProcessItem, "every", 60)
    new = Scheduler(pg_settings, [ProcessItem])
    caplog.set_level(logging.WARNING, "reconcile.scheduler")
    new.ensure_schedules()
    assert f"schedule {ProcessItem.job_name} changed from 'every 3600s'" in caplog.text
    [row] = schedules.list_schedules(engine)
    assert row.spec == "every 60s"

    schedules.trigger_now(engine)
    assert old.claim() == []  # due, but not by its definition
    assert old.check_drift() == [ProcessItem.job_name]
    assert "this scheduler's class says 'every 3600s'" in caplog.text
    assert [c.name for c in new.claim()] == [ProcessItem.job_name]
