"""The proof of docs/metrics.md: a real worker and a real scheduler, scraped over HTTP
on their ``--metrics-port``, show counters that move with the work, and health checks
that answer for them (``/livez``, ``/readyz``, ``reconcile health``).

Also: several worker processes of one host sharing one port (``PROMETHEUS_MULTIPROC_DIR``)
are served as one, their counts added up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from reconcile.config import Settings
from tests.fault.servers import free_port
from tests.metrics_app import CountOrders, Discarded, Flaky, Noop, ShipOrder, app_metadata, orders

ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def eventually(check: Callable[[], Any], timeout: float, what: str,
               proc: subprocess.Popen[str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) while waiting for {what}")
        try:
            last = check()
        except (OSError, KeyError):  # not serving yet
            last = None
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@contextmanager
def process(args: list[str], settings: Settings,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "RECONCILE_POLL_INTERVAL": "0.5",
                "RECONCILE_REDIS_URL": settings.redis_url, "RECONCILE_DATABASE_URL": settings.database_url,
                "RECONCILE_NAMESPACE": settings.namespace, **(env or {})}
    p = subprocess.Popen([sys.executable, "-m", "reconcile", *args, "--app", "tests.metrics_app"],
                         cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield p
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


@pytest.fixture
def orders_engine(pg_settings: Settings) -> Iterator[sa.Engine]:
    from reconcile.store.engine import dispose_engines, get_engine
    from reconcile.store.tables import metadata

    eng = get_engine(pg_settings)
    metadata.create_all(eng)
    app_metadata.create_all(eng)
    yield eng
    dispose_engines()


def health_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconcile", "health", *args], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=30)


def test_a_scraped_worker_and_scheduler_count_the_work_as_it_happens(
    pg_settings: Settings, orders_engine: sa.Engine
) -> None:
    from reconcile import control

    with orders_engine.begin() as conn:
        for i in range(1, 6):
            conn.execute(orders.insert().values(
                id=i, created_at=sa.func.now() - sa.text(f"interval '{120 + i} seconds'")))
        # the oldest pending order is the one that never ships: it gives the lag
        conn.execute(orders.insert().values(id=99, broken=True,
                                            created_at=sa.func.now() - sa.text("interval '600 seconds'")))
    control.set_switch(pg_settings, CountOrders.job_name, False, "metrics test: only its backlog is recorded")
    for n in range(3):
        Noop.perform_async(n)
    Flaky.perform_async(1)
    Discarded.perform_async(2)
    wport, sport = free_port(), free_port()
    started = time.time()
    worker_args = ["worker", "-q", "metrics", "-c", "2", "--metrics-port", str(wport)]
    with process(["scheduler", "--metrics-port", str(sport)], pg_settings) as sched, \
            process(worker_args, pg_settings) as worker:
        ship = ShipOrder.job_name

        def worker_settled() -> Samples | None:
            s = scrape(wport)
            done = value(s, "reconcile_jobs_total", **{"class": ship, "queue": "metrics", "outcome": "done"})
            dead = value(s, "reconcile_jobs_total", **{"class": ship, "queue": "metrics", "outcome": "dead"})
            flaky = value(s, "reconcile_jobs_total", **{"class": Flaky.job_name, "queue": "metrics",
                                                        "outcome": "dead"})
            return s if (done, dead, flaky) == (5, 1, 1) else None

        w = eventually(worker_settled, 60, "the worker's counters", worker)
        job = {"queue": "metrics"}
        assert value(w, "reconcile_jobs_total", **{"class": Noop.job_name, "outcome": "done", **job}) == 3
        assert value(w, "reconcile_jobs_total", **{"class": Flaky.job_name, "outcome": "retry", **job}) == 1
        assert value(w, "reconcile_jobs_total", **{"class": Discarded.job_name, "outcome": "discarded",
                                                   **job}) == 1
        # the histogram saw every delivery that ran: 5 done + 1 dead orders
        assert value(w, "reconcile_job_duration_seconds_count", **{"class": ship}) == 6
        assert value(w, "reconcile_job_duration_seconds_bucket", **{"class": ship, "le": "+Inf"}) == 6
        [proc_gauge] = [k for k in w if k[0] == "reconcile_process_threads"]
        assert w[proc_gauge] == 2 and dict(proc_gauge[1])["process"].split(":")[1] == str(worker.pid)
        assert any(k[0] == "reconcile_in_flight" for k in w)
        assert not any(k[0] == "reconcile_queue_size" for k in w), "cluster gauges are not a worker's"

        def passes_counted() -> Samples | None:
            s = scrape(sport)
            quarantined = value(s, "reconcile_pass_keys_total", **{"class": ship, "kind": "quarantined"})
            lag = value(s, "reconcile_lag_seconds", **{"class": ship})
            # after the death: passes skip the quarantined order, which is all that is pending
            return s if quarantined and lag is not None and lag >= 590 else None

        s = eventually(passes_counted, 60, "the scheduler's pass counters and the lag", sched)
        assert value(s, "reconcile_pass_keys_total", **{"class": ship, "kind": "found"}) >= 6
        assert value(s, "reconcile_pass_keys_total", **{"class": ship, "kind": "enqueued"}) >= 6
        assert value(s, "reconcile_passes_total", **{"class": ship, "result": "ok"}) >= 2
        assert value(s, "reconcile_pass_duration_seconds_count", **{"class": ship}) >= 2
        disabled = {"class": CountOrders.job_name, "result": "disabled"}
        assert value(s, "reconcile_passes_total", **disabled) == 1
        last = value(s, "reconcile_last_pass_timestamp_seconds", **{"class": ship})
        assert last is not None and started - 5 < last < time.time() + 5
        lag = value(s, "reconcile_lag_seconds", **{"class": ship})
        assert lag is not None and 590 <= lag < 700, lag
        assert value(s, "reconcile_lag_seconds", **{"class": CountOrders.job_name}) is None, \
            "a class without pending_since exports no lag"
        assert value(s, "reconcile_quarantined", **{"class": ship}) == 1
        assert value(s, "reconcile_schedulers_alive") == 1
        assert value(s, "reconcile_processes", state="alive") == 1
        assert value(s, "reconcile_set_jobs", set="dead") == 2  # the broken order, Flaky
        assert value(s, "reconcile_metrics_source_up", source="postgresql") == 1
        assert not any(k[0] == "reconcile_jobs_total" for k in s), "job counters are the workers'"

        # a Redis loss: the scheduler handles it and counts the incident
        from reconcile.broker import get_broker

        broker = get_broker(pg_settings)
        broker.redis.delete(broker.keys.epoch)
        eventually(lambda: value(scrape(sport), "reconcile_incidents_total", kind="epoch_lost") == 1,
                   30, "the incident counter", sched)
        # ... and how long it took to heal: every pass it made due ran once since
        healed = eventually(lambda: value(scrape(sport), "reconcile_incident_heal_seconds_count",
                                          kind="epoch_lost") == 1, 30, "the heal time", sched)
        assert healed
        heal_sum = value(scrape(sport), "reconcile_incident_heal_seconds_sum", kind="epoch_lost")
        assert heal_sum is not None and 0 < heal_sum < 30, heal_sum
        print(f"incident healed in {heal_sum:.2f}s")

        # health: both live and ready, over HTTP and through `reconcile health`
        for port in (wport, sport):
            for path in ("/livez", "/readyz"):
                code, body = get(port, path)
                assert (code, body["status"]) == (200, "ok"), (port, path, body)
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{wport}/nothing-here", timeout=5)
        assert missing.value.code == 404
        ok = health_cli("--url", f"http://127.0.0.1:{wport}")
        assert ok.returncode == 0 and "ready: ok" in ok.stdout, ok
        # a quiet worker (TSTP) is alive but not ready
        worker.send_signal(signal.SIGTSTP)
        eventually(lambda: get(wport, "/readyz")[0] == 503, 10, "the quiet worker's readiness", worker)
        code, body = get(wport, "/readyz")
        assert body["status"] == "fail" and any("quiet" in r for r in body["reasons"])
        assert get(wport, "/livez")[0] == 200
        not_ready = health_cli("--url", f"http://127.0.0.1:{wport}")
        assert not_ready.returncode == 1 and "quiet" in not_ready.stdout, not_ready
        assert health_cli("--url", f"http://127.0.0.1:{wport}", "--live").returncode == 0
    # both stopped: nothing answers, which is unhealthy, not a usage error
    gone = health_cli("--url", f"http://127.0.0.1:{wport}", "--live", "--timeout", "2")
    assert gone.returncode == 1 and "cannot reach" in gone.stdout, gone


def test_health_finds_a_process_by_its_id_in_the_redis_registry(settings: Settings) -> None:
    port = free_port()
    with process(["worker", "-q", "metrics-health", "--metrics-port", str(port)], settings) as worker:
        _, body = eventually(lambda: get(port, "/livez"), 30, "the worker's server", worker)
        proc_id = body["process"]
        env = ["--redis-url", settings.redis_url, "--namespace", settings.namespace]
        ok = health_cli("--process", proc_id, *env)
        assert ok.returncode == 0 and proc_id in ok.stdout, ok
        # a Kubernetes exec probe in the worker's container: the setting names the port
        local = health_cli("--live", "--json", env={"RECONCILE_METRICS_PORT": str(port)})
        assert local.returncode == 0 and json.loads(local.stdout)["process"] == proc_id, local
    missing = health_cli("--process", proc_id, *env)
    assert missing.returncode == 1 and "no worker or scheduler" in missing.stdout, missing


def test_health_without_a_way_to_find_the_process_is_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RECONCILE_METRICS_PORT"}
    both = subprocess.run([sys.executable, "-m", "reconcile", "health", "--url", "http://x:1",
                           "--process", "p"], cwd="/", env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True)
    assert both.returncode == 2 and "not both" in both.stderr
    neither = subprocess.run([sys.executable, "-m", "reconcile", "health"], cwd="/",
                             env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert neither.returncode == 2 and "--url" in neither.stderr
    bad = subprocess.run([sys.executable, "-m", "reconcile", "health", "--url", "ftp://h:1"], cwd="/",
                         env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert bad.returncode == 2 and "http://host:port" in bad.stderr


def test_a_taken_metrics_port_stops_the_worker_with_one_line(settings: Settings) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with process(["worker", "-q", "metrics-x", "--metrics-port", str(port)], settings,
                     env={"RECONCILE_METRICS_HOST": "127.0.0.1"}) as p:
            _, err = p.communicate(timeout=30)
    assert p.returncode == 2, err
    [line] = [x for x in err.splitlines() if x.startswith("reconcile:")]
    assert f"127.0.0.1:{port}" in line and "PROMETHEUS_MULTIPROC_DIR" in line


def test_two_worker_processes_of_one_host_share_one_port(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    args = ["worker", "-q", "metrics-mp", "-c", "2", "--metrics-port", str(port)]
    with process(args, settings, env) as first, process(args, settings, env) as second:
        # both registered: each takes jobs
        from reconcile.api import status

        eventually(lambda: len([p for p in status(settings)["processes"] if p["alive"]]) == 2,
                   30, "two live workers", first)
        Noop.set(queue="metrics-mp").perform_bulk([[n] for n in range(200)])

        def total() -> float | None:
            s = scrape(port)
            n = value(s, "reconcile_jobs_total", **{"class": "metrics.Noop", "queue": "metrics-mp",
                                                    "outcome": "done"})
            return s if n == 200 else None

        s = eventually(total, 60, "200 jobs counted across both processes", second)
        threads = {dict(k[1])["process"]: v for k, v in s.items() if k[0] == "reconcile_process_threads"}
        assert len(threads) == 2 and set(threads.values()) == {2.0}, threads
        assert {p.split(":")[1] for p in threads} == {str(first.pid), str(second.pid)}
        # each process ran some of them (both files were added up, not one process's)
        files = sorted(f.name for f in tmp_path.iterdir() if f.name.startswith("counter_"))
        assert len(files) == 2, files
        # the process holding the port stops: the other takes it over
        holder = first if get(port, "/livez")[1]["process"].split(":")[1] == str(first.pid) else second
        other = second if holder is first else first
        holder.send_signal(signal.SIGTERM)
        holder.communicate(timeout=30)
        taken = eventually(lambda: get(port, "/livez")[1]["process"], 30, "the takeover", other)
        assert taken.split(":")[1] == str(other.pid)
        assert value(scrape(port), "reconcile_jobs_total", **{"class": "metrics.Noop", "queue": "metrics-mp",
                                                              "outcome": "done"}) == 200, \
            "a stopped process's counts stay in the total"
