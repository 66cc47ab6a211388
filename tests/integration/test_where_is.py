"""Where is my job, and why is this key not done (issue 13, items 7 and 8).

``reconcile job JID`` / ``reconcile.api.job`` answer through the jid index in one
bounded call; ``reconcile key CLASS KEY`` / ``ReconciledJob.status`` start from the
truth in PostgreSQL. A pass's ReconciledJobs cost the index nothing while they wait,
and the index forgets a job when it ends. Releasing a quarantined key removes its dead
records; a dead record whose key is done since is shown resolved.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from reconcile import Job, api, whereis
from reconcile.broker import Broker, SettleOp
from reconcile.cli import main
from reconcile.config import Settings
from reconcile.scheduler.passes import run_pass
from reconcile.store import quarantine, switches
from reconcile.worker.executor import Executor
from tests.reconciled_app import ForgetfulItem, ProcessItem, SyncStock, items, regions

APP = "tests.reconciled_app"


class Indexed(Job):
    queue = "where"
    retry = 3

    def perform(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"negative {n}")


class DiesAtOnce(Indexed):
    retry = 0


def run_cli(settings: Settings, *args: str) -> Result:
    flags = ["--redis-url", settings.redis_url, "--namespace", settings.namespace]
    if settings.database_url:
        flags += ["--database-url", settings.database_url]
    return CliRunner().invoke(main, [*args, *flags], env={"RECONCILE_APP": None})


def index_size(broker: Broker) -> int:
    return int(broker.redis.hlen(broker.keys.jobs))


def deliver(settings: Settings, broker: Broker, queue: str, proc: str = "w1") -> SettleOp:
    got = broker.exchange(proc, [queue], 1)
    assert len(got) == 1
    op = Executor(settings, broker).run(got[0])
    broker.settle(proc, [op])
    return op


# -- by jid ------------------------------------------------------------------------------


def test_a_plain_job_is_found_queued_with_its_position_and_forgotten_when_it_ends(
    settings: Settings, broker: Broker,
) -> None:
    jids = [Indexed.perform_async(i) for i in range(3)]
    where = [api.job(j, settings) for j in jids]  # type: ignore[arg-type]
    assert [w["state"] for w in where] == ["queued"] * 3
    assert [w["position"] for w in where] == [0, 1, 2]  # 0 runs next
    assert where[1]["queue"] == "where" and where[1]["queue_length"] == 3 and where[1]["args"] == [1]
    for _ in range(3):
        deliver(settings, broker, "where")
    assert [api.job(j, settings)["state"] for j in jids] == ["unknown"] * 3  # type: ignore[arg-type]
    assert index_size(broker) == 0, "the index keeps nothing of jobs that ended"


def test_scheduled_running_retrying_and_dead_are_told_apart(settings: Settings, broker: Broker) -> None:
    later = Indexed.perform_in(300, 1)
    doc = api.job(later, settings)  # type: ignore[arg-type]
    assert doc["state"] == "scheduled" and 299 < doc["runs_in"] <= 300

    failing = Indexed.perform_async(-1)
    got = broker.exchange("w-run", ["where"], 1)
    doc = api.job(failing, settings)  # type: ignore[arg-type]
    assert doc["state"] == "running" and doc["process"] == "w-run" and doc["running_seconds"] >= 0
    op = Executor(settings, broker).run(got[0])
    broker.settle("w-run", [op])
    doc = api.job(failing, settings)  # type: ignore[arg-type]
    assert doc["state"] == "retrying" and doc["retry_count"] == 0
    assert doc["error_class"] == "ValueError" and doc["error_message"] == "negative -1"

    dead = DiesAtOnce.perform_async(-2)
    deliver(settings, broker, "where")
    doc = api.job(dead, settings)  # type: ignore[arg-type]
    assert doc["state"] == "dead" and doc["error_class"] == "ValueError"
    assert "raise ValueError" in doc["error_backtrace"]


def test_a_retried_job_is_found_again_in_its_queue_after_promotion(
    settings: Settings, broker: Broker,
) -> None:
    jid = Indexed.perform_async(-1)
    deliver(settings, broker, "where")
    (member, _), = broker.set_entries("retry")
    broker.set_move("retry", [(member, "where", member)])  # "run now"
    doc = api.job(jid, settings)  # type: ignore[arg-type]
    assert doc["state"] == "queued" and doc["position"] == 0 and doc["retry_count"] == 0


def test_a_job_pushed_back_by_a_stopping_worker_stays_found(settings: Settings, broker: Broker) -> None:
    jid = Indexed.perform_async(5)
    broker.exchange("w-stop", ["where"], 1)
    broker.release("w-stop")
    assert api.job(jid, settings)["state"] == "queued"  # type: ignore[arg-type]


def test_trimming_the_dead_set_trims_the_index(settings: Settings, broker: Broker) -> None:
    small = settings.with_overrides(dead_max_jobs=2)
    b = Broker(small)
    jids = [DiesAtOnce.perform_async(-i - 1) for i in range(4)]
    for _ in range(4):
        deliver(small, b, "where")
    states = [api.job(j, small)["state"] for j in jids]  # type: ignore[arg-type]
    assert states == ["unknown", "unknown", "dead", "dead"]
    assert index_size(b) == 2


def test_a_lookup_searches_a_bounded_part_of_the_queue(settings: Settings, broker: Broker) -> None:
    jids = [str(Indexed.perform_async(i)) for i in range(12)]
    near = broker.locate(jids[3], maxscan=5)
    assert (near.state, near.position, near.length) == ("queued", 3, 12)
    far = broker.locate(jids[11], maxscan=5)
    assert (far.state, far.position, far.length) == ("deep", None, 12)
    assert whereis.located(jids[11], far)["note"].startswith("queued further back")
    assert api.job(jids[11], settings)["position"] == 11  # within the default bound


def test_reconcile_job_prints_the_answer_and_refuses_a_bad_jid(settings: Settings, broker: Broker) -> None:
    jid = Indexed.perform_async(7)
    out = run_cli(settings, "job", str(jid))
    assert out.exit_code == 0, out.output
    assert out.output.startswith(f"{jid}: queued in where (position 0 of 1; 0 runs next)")
    doc = json.loads(run_cli(settings, "job", str(jid), "--json").output)
    assert doc["state"] == "queued" and doc["class"] == Indexed.job_name
    bad = run_cli(settings, "job", "not a jid!")
    assert bad.exit_code == 2 and "is not a jid" in bad.output


# -- ReconciledJobs: nothing per pass key; found by key ---------------------------------


@pytest.fixture
def rows(app_engine: sa.Engine) -> Iterator[sa.Engine]:
    with app_engine.begin() as conn:
        conn.execute(items.insert(), [{"id": i} for i in (1, 2, 3)])
    yield app_engine


def test_a_pass_adds_nothing_to_the_index(pg_settings: Settings, broker: Broker, rows: sa.Engine) -> None:
    result = run_pass(ProcessItem, trigger="manual")
    assert result.enqueued == 3
    assert index_size(broker) == 0, "no jid index memory per pass-enqueued key"
    (raw, *_), = [broker.queue_entries("items", 1)]
    jid = json.loads(raw)["jid"]
    doc = api.job(jid, pg_settings)
    assert doc["state"] == "unknown" and "reconcile key" in doc["note"]
    for _ in range(3):
        deliver(pg_settings, broker, "items")
    assert index_size(broker) == 0, "running entries end with their deliveries"


def test_key_status_follows_a_key_from_pending_to_done(
    pg_settings: Settings, broker: Broker, rows: sa.Engine,
) -> None:
    assert ProcessItem.status(1)["verdict"] == "waiting_for_pass"
    run_pass(ProcessItem, trigger="manual")
    doc = ProcessItem.status(1)
    assert doc["verdict"] == "in_redis" and doc["pending"] is True
    # a pass-enqueued key holds a pass lock (a member of its class's lock set), no lock key
    assert doc["redis"]["job"]["state"] == "enqueued" and doc["redis"]["lock_ttl"] == "pass"

    ProcessItem.entered, ProcessItem.hold = threading.Event(), threading.Event()
    try:
        got = broker.exchange("w-key", ["items"], 1)
        key = json.loads(got[0].raw)["args"][0]
        executor = Executor(pg_settings, broker)
        worker = threading.Thread(target=lambda: broker.settle("w-key", [executor.run(got[0])]))
        worker.start()
        assert ProcessItem.entered.wait(10)
        running = ProcessItem.status(key)
        assert running["verdict"] == "running" and running["running"]["backend_pid"] > 0
    finally:
        ProcessItem.hold.set()
        worker.join(10)
        ProcessItem.entered = ProcessItem.hold = None
    done = ProcessItem.status(key)
    assert done["verdict"] == "done" and done["pending"] is False and "job" not in done["redis"]


def test_a_retrying_key_names_its_job(pg_settings: Settings, broker: Broker, rows: sa.Engine) -> None:
    class Flaky(ProcessItem):
        retry = 3

        def perform(self, session: Any, item_id: int) -> None:  # type: ignore[override]
            raise RuntimeError("flaky")

    try:
        jid = Flaky.perform_async(2)
        deliver(pg_settings, broker, "items")
        doc = Flaky.status(2)
        assert doc["verdict"] == "in_redis"
        assert doc["redis"]["job"]["jid"] == jid and doc["redis"]["job"]["state"] == "retrying"
        assert doc["redis"]["job"]["error_message"] == "flaky"
    finally:
        from reconcile import registry

        registry.unregister(Flaky.job_name)


def test_quarantined_and_disabled_keys_say_so(pg_settings: Settings, broker: Broker, rows: sa.Engine) -> None:
    ForgetfulItem.perform_async(3)
    deliver(pg_settings, broker, "items")  # does not converge, retry = 0: dead + quarantined
    doc = ForgetfulItem.status(3)
    assert doc["verdict"] == "quarantined"
    assert doc["quarantine"]["reason"] and doc["quarantine"]["failures"] == 1
    assert doc["quarantine"]["error_class"] == "reconcile.errors.NotConverged"
    switches.set_enabled(rows, ProcessItem.job_name, False, "incident 7")
    doc = ProcessItem.status(1)
    assert doc["verdict"] == "disabled" and doc["disabled_reason"] == "incident 7"


def test_reconcile_key_accepts_the_short_name_and_refuses_bad_input(
    pg_settings: Settings, broker: Broker, rows: sa.Engine,
) -> None:
    with rows.begin() as conn:
        conn.execute(regions.insert().values(sku=7, region="eu"))
    out = run_cli(pg_settings, "key", "SyncStock", '[7, "eu"]', "--app", APP)
    assert out.exit_code == 0, out.output
    assert out.output.startswith(f"{SyncStock.job_name} [7, 'eu']: pending, not in Redis")
    doc = json.loads(run_cli(pg_settings, "key", "ProcessItem", "2", "--json", "--app", APP).output)
    assert doc["verdict"] == "waiting_for_pass" and doc["key"] == [2]
    unknown = run_cli(pg_settings, "key", "ProcesItem", "2", "--app", APP)
    assert unknown.exit_code == 2 and f"did you mean {ProcessItem.job_name}" in unknown.output
    wrong = run_cli(pg_settings, "key", "ProcessItem", "abc", "--app", APP)
    assert wrong.exit_code == 2 and "abc" in wrong.output and "Traceback" not in wrong.output


# -- dead records and quarantine stay consistent (item 8) ----------------------------------


def kill_key(settings: Settings, broker: Broker, key: int) -> str:
    jid = ForgetfulItem.perform_async(key)
    deliver(settings, broker, "items")
    assert api.job(jid, settings)["state"] == "dead"  # type: ignore[arg-type]
    return str(jid)


def test_releasing_a_quarantined_key_removes_its_dead_record(
    pg_settings: Settings, broker: Broker, rows: sa.Engine,
) -> None:
    jid = kill_key(pg_settings, broker, 1)
    other = kill_key(pg_settings, broker, 2)
    shown = run_cli(pg_settings, "quarantine", "list", "--app", APP)
    assert f"dead record {jid}" in shown.output and f"dead record {other}" in shown.output
    link = run_cli(pg_settings, "dead", "show", jid, "--app", APP)
    assert "quarantine: quarantined (" in link.output and "the key is still pending" in link.output
    out = run_cli(pg_settings, "quarantine", "release", "--job", "ForgetfulItem", "1", "--app", APP)
    assert out.exit_code == 0 and "released 1 keys" in out.output
    assert api.job(jid, pg_settings)["state"] == "unknown"
    assert api.job(other, pg_settings)["state"] == "dead", "only the released key's records go"
    assert broker.set_sizes()["dead"] == 1


def test_a_later_success_marks_the_dead_record_resolved(
    pg_settings: Settings, broker: Broker, rows: sa.Engine,
) -> None:
    jid = kill_key(pg_settings, broker, 3)
    quarantine.release(rows, ForgetfulItem.job_name, [[3]])  # released behind reconcile's back
    ProcessItem.perform_async(3)
    deliver(pg_settings, broker, "items")  # a later delivery makes the key done
    doc = api.job(jid, pg_settings)
    assert doc["state"] == "dead" and doc["quarantine"] is None and doc["resolved"] is True
    out = run_cli(pg_settings, "dead", "show", jid, "--app", APP)
    assert ("quarantine: none (released, or never quarantined); resolved: the key is no longer "
            "pending") in out.output
    as_json = json.loads(run_cli(pg_settings, "dead", "show", jid, "--json", "--app", APP).output)
    assert as_json["resolved"] is True and as_json["quarantine"] is None
