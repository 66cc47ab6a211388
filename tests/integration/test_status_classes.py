"""Per-class status (issue 13, item 5): ``reconcile status`` (text and ``--json``),
``reconcile.api.status()`` and the dashboard show, per ReconciledJob class, its last
pass (when, trigger, counts, duration, error), next tick, switch and quarantine size;
the dashboard's dead and quarantine pages link a dead record to its quarantine entry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from reconcile import api
from reconcile.broker import Broker
from reconcile.cli import main
from reconcile.config import Settings
from reconcile.scheduler.passes import run_pass
from reconcile.store import quarantine, switches
from reconcile.web import Dashboard
from reconcile.worker.executor import Executor
from tests.reconciled_app import ForgetfulItem, ProcessItem, items
from tests.web_client import call

APP = "tests.reconciled_app"


@pytest.fixture
def rows(app_engine: sa.Engine) -> Iterator[sa.Engine]:
    with app_engine.begin() as conn:
        conn.execute(items.insert(), [{"id": i} for i in (1, 2, 3, 4)])
    yield app_engine


def of(doc: dict[str, Any], cls: type) -> dict[str, Any]:
    (found,) = [c for c in doc["classes"] if c["class"] == cls.job_name]  # type: ignore[attr-defined]
    return found


def test_status_shows_each_class_last_pass_switch_and_quarantine(
    pg_settings: Settings, broker: Broker, rows: sa.Engine,
) -> None:
    before = of(api.status(pg_settings), ProcessItem)
    assert before["last_pass"] is None and before["enabled"] is True and before["quarantined"] == 0
    quarantine.add(rows, ProcessItem.job_name, [4], "exhausted retries", "Boom", "it broke")
    run_pass(ProcessItem, trigger="manual")
    switches.set_enabled(rows, ForgetfulItem.job_name, False, "incident 9")
    run_pass(ForgetfulItem, trigger="manual")
    doc = api.status(pg_settings)
    c = of(doc, ProcessItem)
    assert c["quarantined"] == 1
    assert c["last_pass"]["trigger"] == "manual" and c["last_pass"]["found"] == 4
    assert c["last_pass"]["enqueued"] == 3 and c["last_pass"]["quarantined"] == 1
    assert c["last_pass"]["duration_ms"] is not None and c["last_pass"]["error"] is None
    f = of(doc, ForgetfulItem)
    assert f["enabled"] is False and f["disabled_reason"] == "incident 9"
    assert f["last_pass"]["disabled"] is True

    flags = ["--redis-url", pg_settings.redis_url, "--database-url", pg_settings.database_url,
             "--namespace", pg_settings.namespace, "--app", APP]
    text = CliRunner().invoke(main, ["status", *flags])
    assert text.exit_code == 0, text.output
    line = next(x for x in text.output.splitlines() if x.startswith(f"class {ProcessItem.job_name} "))
    assert "enabled" in line and "quarantined 1" in line and "(manual," in line
    assert "found 4 enqueued 3" in line
    assert f"class {ForgetfulItem.job_name} DISABLED (incident 9)" in text.output
    as_json = json.loads(CliRunner().invoke(main, ["status", "--json", *flags]).output)
    assert of(as_json, ProcessItem)["last_pass"]["found"] == 4


def test_the_redis_half_stands_when_postgresql_cannot_be_read(settings: Settings, broker: Broker) -> None:
    doc = api.status(settings.with_overrides(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none"))
    assert doc["classes"] is None and "classes_error" in doc
    assert "queues" in doc and "counters" in doc


def test_the_dashboard_shows_classes_and_links_dead_records_to_their_quarantine(
    pg_settings: Settings, broker: Broker, rows: sa.Engine,
) -> None:
    run_pass(ProcessItem, trigger="manual")
    jid = ForgetfulItem.perform_async(1)
    got = broker.exchange("w", ["items"], 10)
    mine = [d for d in got if json.loads(d.raw)["jid"] == jid]
    broker.settle("w", [Executor(pg_settings, broker).run(mine[0])])
    app = Dashboard(pg_settings)
    code, _, page = call(app, "/")
    assert code == 200 and "<h3>Classes</h3>" in page and ProcessItem.job_name in page
    code, _, dead = call(app, "/dead")
    assert code == 200 and "quarantined (" in dead and "the key is still pending" in dead
    code, _, held = call(app, "/quarantine")
    assert code == 200 and f"dead record {jid}" in held
