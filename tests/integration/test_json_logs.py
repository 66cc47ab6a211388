"""``--log-format json``: every line a worker writes is one JSON object, the banner and
failures included, and lines written while a job runs, the application's own, carry
the job's fields."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from reconcile.config import Settings
from reconcile.logs import JsonFormatter, job_context
from tests.json_log_app import AlwaysFails, SendMail

ROOT = Path(__file__).resolve().parents[2]


def test_every_line_of_a_worker_is_json_and_job_lines_carry_the_job(settings: Settings) -> None:
    mail = SendMail.perform_async("ann@example.com")
    failed = AlwaysFails.perform_async(7)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECONCILE_LOG_FORMAT": "json"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "reconcile", "worker", "--app", "tests.json_log_app", "-q", "jsonlog",
         "-c", "2", "--redis-url", settings.redis_url, "--namespace", settings.namespace],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    r = redis.Redis.from_url(settings.redis_url)
    deadline = time.monotonic() + 30
    try:
        # both settled: the failure in the dead set, the mail job acked (after its line)
        while r.zcard(f"{{{settings.namespace}}}:dead") < 1 or int(
                r.get(f"{{{settings.namespace}}}:stat:processed") or 0) < 1:
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            assert time.monotonic() < deadline, "the jobs did not run"
            time.sleep(0.02)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    lines = [x for x in err.splitlines() if x.strip()]
    records: list[dict[str, Any]] = []
    for line in lines:
        records.append(json.loads(line))  # every line, or this fails naming it
    assert {"ts", "level", "logger", "msg"} <= set(records[0])
    [banner] = [r["banner"] for r in records if "banner" in r]  # one object, not a block of lines
    assert banner["role"] == "worker" and banner["namespace"] == settings.namespace
    assert banner["queues"] == {"jsonlog": 1} and banner["concurrency"] == 2
    assert SendMail.job_name in banner["classes"] and "tests.json_log_app" in banner["app_modules"]
    [sent] = [r for r in records if r["logger"] == "app.mail"]
    assert (sent["jid"], sent["class"], sent["queue"], sent["attempt"]) == (
        mail, SendMail.job_name, "jsonlog", 1)
    [dead] = [r for r in records if r["level"] == "ERROR" and r.get("jid") == failed]
    assert dead["class"] == AlwaysFails.job_name and "RuntimeError: broken 7" in dead["exc"]
    assert "forged line" in dead["msg"] and "\n" not in dead["msg"].split("broken 7")[1][:2]


def test_a_reconciled_jobs_key_and_a_retrys_attempt_are_fields() -> None:
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    token = job_context.set(("items", {"jid": "j1", "class": "a.B", "args": [42], "retry_count": 0}, True))
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        job_context.reset(token)
    assert (line["msg"], line["jid"], line["key"], line["attempt"]) == ("hello x", "j1", [42], 2)
    assert "jid" not in json.loads(JsonFormatter().format(record))  # outside a job: none
