"""The web dashboard: what its pages show, what its buttons do, and what it refuses.

Requests are made by calling the WSGI application directly (and once through the
standalone server), against real Redis and PostgreSQL.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.request

import orjson
import pytest
import sqlalchemy as sa

from reconcile import Job
from reconcile.api import status
from reconcile.broker import Broker, PushRecord
from reconcile.config import Settings
from reconcile.scheduler.passes import run_pass
from reconcile.store import quarantine
from reconcile.web import Dashboard, serve
from tests.jobs_core import Record, running_worker, wait_for
from tests.reconciled_app import ProcessItem, items
from tests.web_client import HOST, call, same_site


class Doomed(Job):
    name = "web.Doomed"
    retry = 0

    def perform(self, text: str) -> None:
        raise RuntimeError(f"cannot handle {text}")


def kill(settings: Settings, broker: Broker, text: str) -> str:
    jid = Doomed.perform_async(text)
    with running_worker(settings):
        wait_for(lambda: broker.set_sizes()["dead"] >= 1, what="dead")
    return str(jid)


def test_overview_shows_queues_sets_processes_and_counters(settings: Settings, broker: Broker) -> None:
    Record.perform_bulk([[f"w{i}"] for i in range(3)])
    app = Dashboard(settings)
    with running_worker(settings, ["other"]) as worker:
        code, headers, page = call(app, "/")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert ">default</a>" in page and "<td>3</td>" in page, "the queue and its size"
    assert worker.proc_id in page and "alive" in page
    assert 'href="/admin/jobs/dead"' in page, "links follow the mount point"
    for name in ("scheduled", "retry", "dead", "processed", "already_done"):
        assert name in page
    assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"


def test_job_arguments_are_escaped(settings: Settings, broker: Broker) -> None:
    Record.perform_async('<script>alert("x")</script>')
    code, _, page = call(Dashboard(settings), "/queue?name=default")
    assert code == 200
    assert "<script>alert" not in page
    assert '[&quot;&lt;script&gt;alert(\\&quot;x\\&quot;)&lt;/script&gt;&quot;]' in page, "JSON, escaped"


def test_dead_job_is_retried_from_its_button(settings: Settings, broker: Broker) -> None:
    jid = kill(settings, broker, "a")
    app = Dashboard(settings)
    code, _, page = call(app, "/dead")
    assert code == 200 and jid in page and "cannot handle a" in page
    assert 'action="/admin/jobs/dead/retry"' in page
    code, headers, _ = call(app, "/dead/retry", "POST", {"jid": jid}, **same_site())
    assert code == 303
    assert headers["Location"] == "/admin/jobs/dead?msg=retried%201%20jobs"
    assert broker.set_sizes()["dead"] == 0
    [queued] = broker.queue_entries("default")
    assert orjson.loads(queued)["jid"] == jid
    code, _, page = call(app, "/dead?msg=retried%201%20jobs")
    assert "retried 1 jobs" in page


@pytest.mark.parametrize("headers", [
    {},
    {"ORIGIN": "http://evil.example"},
    {"REFERER": "http://evil.example/page"},
    {"ORIGIN": "null"},
    same_site(SEC_FETCH_SITE="cross-site"),
], ids=["no origin", "other origin", "other referer", "null origin", "cross-site fetch"])
def test_actions_from_another_site_are_refused(
    settings: Settings, broker: Broker, headers: dict[str, str]
) -> None:
    kill(settings, broker, "b")
    code, _, body = call(Dashboard(settings), "/dead/delete", "POST", {"all": "1"}, **headers)
    assert code == 403 and "does not come from this dashboard" in body
    assert broker.set_sizes()["dead"] == 1, "nothing deleted"


def test_referer_of_the_same_host_is_accepted(settings: Settings, broker: Broker) -> None:
    kill(settings, broker, "c")
    code, _, _ = call(Dashboard(settings), "/dead/delete", "POST", {"all": "1"},
                      REFERER=f"http://{HOST}/admin/jobs/dead")
    assert code == 303 and broker.set_sizes()["dead"] == 0


def test_read_only_dashboard_shows_no_buttons_and_refuses_actions(
    settings: Settings, broker: Broker
) -> None:
    jid = kill(settings, broker, "d")
    app = Dashboard(settings, read_only=True)
    code, _, page = call(app, "/dead")
    assert code == 200 and jid in page and "<form" not in page
    code, _, _ = call(app, "/dead/retry", "POST", {"jid": jid}, **same_site())
    assert code == 403 and broker.set_sizes()["dead"] == 1


def test_quarantine_page_lists_and_releases_keys(
    pg_settings: Settings, app_engine: sa.Engine, broker: Broker
) -> None:
    with app_engine.begin() as c:
        c.execute(items.insert(), [{"id": 5}])
    ProcessItem.on_death({"args": [5], "error_class": "Boom", "error_message": "<b>x</b>"},
                         RuntimeError("<b>x</b>"))
    app = Dashboard(pg_settings)
    code, _, page = call(app, "/quarantine")
    assert code == 200 and ProcessItem.job_name in page and "[5]" in page
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    code, headers, _ = call(app, "/quarantine/release", "POST",
                            {"job": ProcessItem.job_name, "key": json.dumps([5])}, **same_site())
    assert code == 303 and "released%201%20keys" in headers["Location"]
    assert quarantine.keys(app_engine, ProcessItem.job_name) == set()


def test_runs_page_lists_passes(pg_settings: Settings, app_engine: sa.Engine, broker: Broker) -> None:
    with app_engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, 4)])
    run_pass(ProcessItem, settings=pg_settings, trigger="manual")
    code, _, page = call(Dashboard(pg_settings), "/runs")
    assert code == 200 and ProcessItem.job_name in page and "manual" in page


def test_status_json_is_the_api_document(settings: Settings, broker: Broker) -> None:
    Record.perform_async("j")
    code, headers, body = call(Dashboard(settings), "/status.json")
    assert code == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc.keys() == status(settings).keys()
    assert doc["queues"] == [{"name": "default", "size": 1, "latency": doc["queues"][0]["latency"]}]


def test_unknown_paths_and_wrong_methods(settings: Settings) -> None:
    app = Dashboard(settings)
    assert call(app, "/nope")[0] == 404
    code, headers, _ = call(app, "/dead", "POST", **same_site())
    assert code == 405 and headers["Allow"] == "GET, HEAD"
    code, headers, _ = call(app, "/dead/retry")
    assert code == 405 and headers["Allow"] == "POST"


def test_an_unreachable_redis_gives_a_503_page_naming_it(settings: Settings) -> None:
    app = Dashboard(settings.with_overrides(redis_url="redis://127.0.0.1:1/0"))
    code, _, page = call(app, "/")
    assert code == 503 and "Redis could not be read" in page


def test_standalone_server_serves_the_dashboard(settings: Settings, broker: Broker) -> None:
    server = serve(settings, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/"
        # a client that connects and sends nothing must not hold up the next one
        idle = socket.create_connection(("127.0.0.1", server.server_port))
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                assert reply.status == 200 and b"Overview" in reply.read()
        finally:
            idle.close()
    finally:
        server.shutdown()
        server.server_close()


def test_postgresql_pages_without_the_tables_give_a_503_naming_it(pg_settings: Settings) -> None:
    code, _, page = call(Dashboard(pg_settings), "/quarantine")
    assert code == 503 and "PostgreSQL could not be read" in page and "reconcile_quarantine" in page


def test_metrics_are_the_status_in_prometheus_text_format(settings: Settings, broker: Broker) -> None:
    Record.perform_bulk([["m1"], ["m2"]])
    # a queue name the client refuses, written by an older client or straight into Redis
    odd = orjson.dumps({"queue": 'odd"q\\', "jid": "0" * 24, "class": Record.job_name, "args": ["m3"],
                        "created_at": 1.0, "enqueued_at": 1.0, "retry": True})
    broker.push([PushRecord('odd"q\\', 0.0, "", 0, odd)])
    with running_worker(settings, ["idle"]):
        code, headers, body = call(Dashboard(settings), "/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    # prometheus_client's values: floats, exact (1.23456789e+08 reads back as 123456789)
    samples = {k: float(v) for k, v in (line.rsplit(" ", 1) for line in body.splitlines()
                                         if not line.startswith("#"))}
    assert samples['reconcile_queue_size{queue="default"}'] == 2
    assert samples['reconcile_queue_size{queue="odd\\"q\\\\"}'] == 1, "label values escaped"
    assert samples['reconcile_set_jobs{set="dead"}'] == 0
    assert samples['reconcile_set_due_jobs{set="scheduled"}'] == 0
    assert samples['reconcile_processes{state="alive"}'] == 1
    assert samples["reconcile_threads"] == settings.concurrency
    assert samples['reconcile_namespace_jobs_total{outcome="processed"}'] == 0
    assert samples['reconcile_metrics_source_up{source="redis"}'] == 1
    assert "# TYPE reconcile_namespace_jobs_total counter" in body


def test_scheduled_job_is_run_now_or_deleted_from_its_buttons(settings: Settings, broker: Broker) -> None:
    first = Record.perform_in(3600, "s1")
    second = Record.perform_in(3600, "s2")
    app = Dashboard(settings)
    code, _, page = call(app, "/scheduled")
    assert code == 200 and str(first) in page and 'action="/admin/jobs/scheduled/run"' in page
    code, headers, _ = call(app, "/scheduled/run", "POST", {"jid": first}, **same_site())
    assert code == 303 and headers["Location"] == "/admin/jobs/scheduled?msg=queued%201%20jobs"
    assert [orjson.loads(r)["jid"] for r in broker.queue_entries("default")] == [first]
    code, headers, _ = call(app, "/scheduled/delete", "POST", {"jid": second}, **same_site())
    assert code == 303 and broker.set_sizes()["scheduled"] == 0


def test_a_dashboard_built_before_configure_uses_the_settings_of_each_request(
    settings: Settings, broker: Broker
) -> None:
    from reconcile.config import use_settings

    other = settings.with_overrides(namespace=settings.namespace + "x")
    use_settings(other)
    try:
        app = Dashboard()  # built at import, say, before the app configures reconcile
        assert call(app, "/")[2].count(f"namespace {other.namespace}") == 1
    finally:
        use_settings(settings)
    Record.perform_async("late")
    code, _, page = call(app, "/")
    assert code == 200 and f"namespace {settings.namespace}<" in page and "<td>1</td>" in page
