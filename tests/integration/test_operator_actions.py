"""``reconcile/control.py`` and ``registry.find``: the operator actions behind
``reconcile disable``/``enable``, ``flush``, ``quarantine release`` and ``--job``,
called directly (``tests/integration/test_control.py`` runs them through the CLI)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from reconcile import control, registry
from reconcile.broker import Broker
from reconcile.config import Settings
from reconcile.errors import InvalidKey
from reconcile.reconciled import ReconciledJob
from reconcile.store import quarantine, switches
from tests.jobs_plain_cron import Mailer
from tests.reconciled_app import ProcessItem, items


@pytest.fixture
def engine(app_engine: sa.Engine) -> sa.Engine:
    return app_engine


def test_find_takes_the_full_name_or_a_unique_class_name() -> None:
    assert registry.find(ProcessItem.job_name) is ProcessItem
    assert registry.find("ProcessItem", ReconciledJob) is ProcessItem
    with pytest.raises(LookupError, match="'Mailer' is not a ReconciledJob of the app; known: "):
        registry.find("Mailer", ReconciledJob, "ReconciledJob")
    assert registry.find("Mailer") is Mailer
    with pytest.raises(LookupError, match="'NoSuchJob' is not a job class of the app"):
        registry.find("NoSuchJob")


def test_find_refuses_a_class_name_two_modules_use() -> None:
    twin = type("ProcessItem", (Mailer,), {"__module__": "tests.elsewhere", "perform": Mailer.perform})
    try:
        with pytest.raises(LookupError, match="'ProcessItem' is ambiguous"):
            registry.find("ProcessItem")
        assert registry.find("ProcessItem", ReconciledJob) is ProcessItem, "the base narrows the choice"
    finally:
        registry.unregister(twin.job_name)


def test_set_switch_writes_postgresql_then_the_redis_mirror(
        pg_settings: Settings, engine: sa.Engine, broker: Broker) -> None:
    done = control.set_switch(pg_settings, Mailer.job_name, False, "smtp down")
    assert done == control.SwitchResult(Mailer.job_name)
    assert switches.all_switches(engine)[Mailer.job_name].enabled is False
    assert broker.disabled_jobs() == {Mailer.job_name: "smtp down"}
    control.set_switch(pg_settings, Mailer.job_name, True, "fixed")
    assert switches.all_switches(engine)[Mailer.job_name].enabled is True
    assert broker.disabled_jobs() == {}


def test_set_switch_reports_a_stale_mirror_instead_of_failing(
        pg_settings: Settings, engine: sa.Engine) -> None:
    unreachable = pg_settings.with_overrides(redis_url="redis://127.0.0.1:1/0")
    done = control.set_switch(unreachable, Mailer.job_name, False, "smtp down")
    assert done.name == Mailer.job_name and done.mirror_error is not None
    assert switches.all_switches(engine)[Mailer.job_name].enabled is False, "PostgreSQL is written"


def test_flush_keeps_the_epoch_and_re_derives_reconciled_work(
        pg_settings: Settings, engine: sa.Engine, broker: Broker) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, 11)])
    broker.set_epoch("1:abc")
    Mailer.perform_async("lost@example.com")
    done = control.flush(pg_settings)
    assert done.deleted >= 2, "the queue and its bookkeeping at least"
    assert broker.epoch() == b"1:abc"
    assert broker.queue_entries("plain") == [], "plain jobs are lost, by design"
    ran = {r.job: r for r in done.results}
    assert ran[ProcessItem.job_name].enqueued == 10
    assert done.elsewhere == 0


def test_parse_key_reads_json_arrays_scalars_and_plain_text() -> None:
    assert control.parse_key('[7,"eu"]') == [7, "eu"]
    assert control.parse_key("42") == [42]
    assert control.parse_key('"42"') == ["42"]
    assert control.parse_key("eu-west") == ["eu-west"]


def test_release_quarantined_releases_the_canonical_form_too(
        pg_settings: Settings, engine: sa.Engine) -> None:
    ProcessItem.on_death({"args": [7], "error_class": "Boom", "error_message": "x"}, RuntimeError("x"))
    assert control.release_quarantined(pg_settings, ProcessItem.job_name, [["7"]]) == 0, (
        "without the class, only the spelling given is released")
    assert control.release_quarantined(pg_settings, ProcessItem.job_name, [["7"]], ProcessItem) == 1
    assert quarantine.keys(engine, ProcessItem.job_name) == set()
    with pytest.raises(InvalidKey):
        control.release_quarantined(pg_settings, ProcessItem.job_name, [[7.5]], ProcessItem)


def test_release_all_quarantined(pg_settings: Settings, engine: sa.Engine) -> None:
    for key in (1, 2):
        ProcessItem.on_death({"args": [key], "error_class": "Boom", "error_message": "x"}, RuntimeError("x"))
    assert control.release_all_quarantined(pg_settings, ProcessItem.job_name) == 2
