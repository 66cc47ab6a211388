"""Operator controls and scheduling details: kill switches, quarantine, cron on plain
jobs, composite keys, ``is_pending`` overrides, and the CLI commands behind them."""

from __future__ import annotations

import json
import time
from zoneinfo import ZoneInfo

import orjson
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from reconcile.broker import Broker, SettleKind
from reconcile.cli import main
from reconcile.config import Settings
from reconcile.reconciled import switch_cache
from reconcile.scheduler.passes import run_pass
from reconcile.scheduler.service import Scheduler
from reconcile.store import quarantine, schedules, switches
from reconcile.worker.executor import Executor
from tests.jobs_plain_cron import Mailer, Nightly
from tests.reconciled_app import ForgetfulItem, NewestItems, ProcessItem, SyncStock, items, regions


@pytest.fixture
def engine(app_engine: sa.Engine) -> sa.Engine:
    return app_engine


def disable(engine: sa.Engine, settings: Settings, name: str) -> None:
    switches.set_enabled(engine, name, False, "test")
    switch_cache(settings).invalidate()


def test_disabled_reconciled_job_is_rejected_skipped_and_dropped(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": 1}, {"id": 2}])
    assert ProcessItem.perform_async(1) is not None  # queued before the switch
    disable(engine, pg_settings, ProcessItem.job_name)
    assert ProcessItem.perform_async(2) is None, "client middleware rejects the enqueue"
    result = run_pass(ProcessItem, settings=pg_settings)
    assert result.disabled and result.enqueued == 0
    assert result.found == 2, "the backlog behind the switch is recorded, not found 0"
    assert "(2 pending keys skipped)" in result.summary()
    executor = Executor(pg_settings, broker)
    (d,) = broker.exchange("p", ["items"], 10)
    op = executor.run(d)
    assert op.kind is SettleKind.DROP, "a queued job of a disabled class is dropped"
    broker.settle("p", [op])  # releases its uniqueness lock
    assert executor.take_counts() == {"disabled": 1}
    switches.set_enabled(engine, ProcessItem.job_name, True, "fixed")
    assert run_pass(ProcessItem, settings=pg_settings).enqueued == 2, "enabling re-derives both"


def test_disabled_plain_job_is_held_not_dropped(pg_settings: Settings, broker: Broker) -> None:
    Mailer.perform_async("a@example.com")
    broker.mirror_switches({Mailer.job_name: "smtp down"})
    executor = Executor(pg_settings, broker)
    (d,) = broker.exchange("p", ["plain"], 1)
    op = executor.run(d)
    assert op.kind is SettleKind.RESCHEDULE and op.payload == d.raw, "held in the scheduled set, unchanged"
    assert executor.take_counts() == {"held": 1}


def test_dead_key_is_quarantined_then_released_by_cli(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": 7}])
    ProcessItem.on_death({"args": [7], "error_class": "Boom", "error_message": "x"}, RuntimeError("x"))
    assert run_pass(ProcessItem, settings=pg_settings).quarantined == 1
    runner = CliRunner()
    env = {"RECONCILE_DATABASE_URL": pg_settings.database_url,
           "RECONCILE_REDIS_URL": pg_settings.redis_url, "RECONCILE_NAMESPACE": pg_settings.namespace}
    listed = runner.invoke(main, ["quarantine", "list", "--app", "tests.reconciled_app"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "[7]" in listed.output and "1 quarantined" in listed.output
    released = runner.invoke(
        main, ["quarantine", "release", "--app", "tests.reconciled_app", "--job", ProcessItem.job_name, "7"],
        env=env,
    )
    assert "released 1 keys" in released.output
    assert quarantine.keys(engine, ProcessItem.job_name) == set()
    assert run_pass(ProcessItem, settings=pg_settings).enqueued == 1


def test_poison_pill_recovered_too_often_is_quarantined(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    from reconcile.worker.maintenance import Maintenance

    with engine.begin() as c:
        c.execute(items.insert(), [{"id": 9}])
    ProcessItem.perform_async(9)
    maintenance = Maintenance(pg_settings, broker)
    for crash in range(pg_settings.max_recoveries + 1):
        proc = f"crashing-{crash}"
        assert len(broker.exchange(proc, ["items"], 1)) == 1
        broker.redis.sadd(broker.keys.procs, proc)  # registered, but its lease is gone
        maintenance.reap_once()
    assert broker.set_sizes()["dead"] == 1
    assert quarantine.keys(engine, ProcessItem.job_name) == {(9,)}


def test_composite_keys(pg_settings: Settings, engine: sa.Engine, broker: Broker) -> None:
    with engine.begin() as c:
        c.execute(regions.insert(), [{"sku": 1, "region": "eu"}, {"sku": 1, "region": "us"}])
    assert run_pass(SyncStock, settings=pg_settings).enqueued == 2
    executor = Executor(pg_settings, broker)
    ops = [executor.run(d) for d in broker.exchange("p", ["items"], 5)]
    assert [op.kind for op in ops] == [SettleKind.ACK] * 2
    broker.settle("p", ops)
    assert run_pass(SyncStock, settings=pg_settings).found == 0


def test_is_pending_override_is_used(pg_settings: Settings, engine: sa.Engine, broker: Broker) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, 21)])
    assert run_pass(NewestItems, settings=pg_settings).found == 5
    executor = Executor(pg_settings, broker)
    NewestItems.calls = 0
    codes = [executor.run(d).kind for d in broker.exchange("p", ["items"], 10)]
    assert codes == [SettleKind.ACK] * 5
    assert NewestItems.calls == 10, "before and after each perform"


def test_cron_plain_job_fires_once_per_tick_across_schedulers(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    schedulers = [Scheduler(pg_settings, [Nightly]) for _ in range(3)]
    for s in schedulers:
        assert s.run_once() == [], "not due before 03:00 Paris time"
    name = "cron:" + Nightly.job_name
    (row,) = [r for r in schedules.list_schedules(engine) if r.name == name]
    local = row.next_run_at.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute) == (3, 0)
    schedules.trigger_now(engine, [name])
    fired = [s.run_once() for s in schedulers]
    assert sorted(map(len, fired)) == [0, 0, 1]
    entries = broker.queue_entries("periodic")
    assert len(entries) == 1 and json.loads(entries[0])["args"] == ["report"]


def test_run_and_flush_commands(pg_settings: Settings, engine: sa.Engine, broker: Broker) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, 101)])
    env = {"RECONCILE_DATABASE_URL": pg_settings.database_url,
           "RECONCILE_REDIS_URL": pg_settings.redis_url, "RECONCILE_NAMESPACE": pg_settings.namespace}
    runner = CliRunner()
    out = runner.invoke(main, ["run", "ProcessItem", "--app", "tests.reconciled_app"], env=env)
    assert out.exit_code == 0, out.output
    assert "found 100, enqueued 100" in out.output
    Mailer.perform_async("lost@example.com")  # a plain job: a flush loses it, by design
    refused = runner.invoke(main, ["flush", "--app", "tests.reconciled_app"], env=env)
    assert refused.exit_code != 0 and "--yes" in refused.output
    flushed = runner.invoke(main, ["flush", "--yes", "--app", "tests.reconciled_app"], env=env)
    assert flushed.exit_code == 0, flushed.output
    assert "pass tests.reconciled_app.ProcessItem: found 100, enqueued 100" in flushed.output
    assert broker.queue_entries("plain") == []
    # every ReconciledJob of the app was re-derived: ProcessItem, ForgetfulItem, NewestItems
    # (other test modules register ReconciledJobs on "items" too: count this app's)
    app = {c.job_name for c in (ProcessItem, ForgetfulItem, NewestItems)}
    classes = [orjson.loads(r)["class"] for r in broker.queue_entries("items", 10_000)]
    assert sum(c in app for c in classes) == 100 + 100 + 5


def test_plain_job_worker_opens_no_database_connection(settings: Settings, broker: Broker) -> None:
    from reconcile.store import engine as engines
    from reconcile.worker import QueueSpec, Worker
    from tests.jobs_plain_cron import ran

    nowhere = settings.with_overrides(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    ran.clear()
    Mailer.perform_async("x@example.com")
    worker = Worker(nowhere, [QueueSpec("plain")], broker=broker)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not ran and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop(1)
    assert ran == ["x@example.com"]
    assert nowhere.database_url not in engines._engines, "no engine was even created"


def test_recovered_jobs_are_leased_alone_once_they_keep_coming_back(
    settings: Settings, broker: Broker
) -> None:
    """max_recoveries 3: a first crash recovers jobs at full batch size; from the
    second recovery on, each suspect is leased alone, so a pill's neighbours are
    counted at most twice and never reach the limit."""
    assert settings.max_recoveries == 3
    Mailer.perform_bulk([[f"m{i}"] for i in range(3)])

    def crash(proc: str) -> None:
        broker.redis.sadd(broker.keys.procs, proc)  # registered; its alive key is gone
        broker.reap()

    assert len(broker.exchange("p1", ["plain"], 10)) == 3
    crash("p1")
    assert len(broker.exchange("p2", ["plain"], 10)) == 3, "recovered once: not yet a suspect"
    crash("p2")
    assert [len(broker.exchange(f"p3-{i}", ["plain"], 10)) for i in range(4)] == [1, 1, 1, 0]


def test_cli_release_takes_any_spelling_of_the_key(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    ProcessItem.on_death({"args": [7], "error_class": "Boom", "error_message": "x"}, RuntimeError("x"))
    env = {"RECONCILE_DATABASE_URL": pg_settings.database_url,
           "RECONCILE_REDIS_URL": pg_settings.redis_url, "RECONCILE_NAMESPACE": pg_settings.namespace}
    base = ["quarantine", "release", "--app", "tests.reconciled_app", "--job", "ProcessItem"]
    bad = CliRunner().invoke(main, [*base, "7.5"], env=env)
    assert bad.exit_code == 2 and "key column 'id' (BIGINT): 7.5 is not a whole number" in bad.output
    released = CliRunner().invoke(main, [*base, '"7"'], env=env)
    assert "released 1 keys" in released.output, released.output
    assert quarantine.keys(engine, ProcessItem.job_name) == set()
