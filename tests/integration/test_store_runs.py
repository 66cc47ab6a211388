"""Runs: one row per reconcile pass, written at its start, completed with its counts."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from reconcile.store import runs
from reconcile.store.tables import runs as runs_table


def test_a_started_run_is_visible_before_it_finishes(engine: Engine) -> None:
    run_id = runs.start_run(engine, "SendInvoice", "tick", "host:1")

    [run] = runs.recent_runs(engine)
    assert run.id == run_id
    assert (run.job, run.trigger, run.scheduler) == ("SendInvoice", "tick", "host:1")
    assert run.finished_at is None and run.duration_ms is None
    assert (run.found, run.enqueued, run.already_queued, run.quarantined) == (0, 0, 0, 0)
    assert run.disabled is False and run.error is None


def test_finishing_records_counts_and_duration(engine: Engine) -> None:
    run_id = runs.start_run(engine, "SendInvoice", "redis_loss", "host:1")

    runs.finish_run(engine, run_id, found=10, enqueued=7, already_queued=2, quarantined=1)

    [run] = runs.recent_runs(engine)
    assert (run.found, run.enqueued, run.already_queued, run.quarantined) == (10, 7, 2, 1)
    assert run.finished_at is not None and run.finished_at >= run.started_at
    assert run.duration_ms is not None and run.duration_ms >= 0


def test_a_failed_or_disabled_pass_says_so(engine: Engine) -> None:
    failed = runs.start_run(engine, "A", "tick", "s")
    disabled = runs.start_run(engine, "B", "tick", "s")

    runs.finish_run(engine, failed, found=3, error="OperationalError: timeout")
    runs.finish_run(engine, disabled, disabled=True)

    by_job = {r.job: r for r in runs.recent_runs(engine)}
    assert by_job["A"].error == "OperationalError: timeout" and by_job["A"].found == 3
    assert by_job["B"].disabled is True and by_job["B"].error is None


def test_recent_runs_are_newest_first_filtered_and_limited(engine: Engine) -> None:
    ids = [runs.start_run(engine, job, "tick", "s") for job in ["A", "B", "A", "A"]]

    assert [r.id for r in runs.recent_runs(engine)] == ids[::-1]
    assert [r.id for r in runs.recent_runs(engine, job="A")] == [ids[3], ids[2], ids[0]]
    assert [r.id for r in runs.recent_runs(engine, job="A", limit=2)] == [ids[3], ids[2]]
    assert runs.recent_runs(engine, job="nobody") == []


@pytest.mark.parametrize("trigger", sorted(runs.TRIGGERS))
def test_every_documented_trigger_is_accepted(engine: Engine, trigger: str) -> None:
    runs.start_run(engine, "A", trigger, "s")

    assert runs.recent_runs(engine)[0].trigger == trigger


def test_an_unknown_trigger_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="unknown run trigger 'cron'"):
        runs.start_run(engine, "A", "cron", "s")


def test_prune_deletes_only_old_runs(engine: Engine) -> None:
    old = runs.start_run(engine, "A", "tick", "s")
    new = runs.start_run(engine, "A", "tick", "s")
    with engine.begin() as conn:
        conn.execute(
            sa.update(runs_table).where(runs_table.c.id == old)
            .values(started_at=sa.func.now() - timedelta(days=31))
        )

    assert runs.prune_runs(engine, timedelta(days=30)) == 1

    assert [r.id for r in runs.recent_runs(engine)] == [new]
