"""A Redis ACL user restricted to the namespace's keys runs everything.

The user is created on the shared Redis with exactly the rule documented in
docs/settings.md (read from that page, so the page cannot drift), under a unique name,
and deleted afterwards.
"""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner

from reconcile.broker import Broker
from reconcile.cli import main
from reconcile.config import Settings, use_settings
from reconcile.scheduler.passes import run_pass
from reconcile.scheduler.service import Scheduler
from reconcile.web import Dashboard
from reconcile.worker import QueueSpec, Worker
from tests.jobs_core import Record, counts
from tests.reconciled_app import ProcessItem, items

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def documented_rule() -> list[str]:
    """The ``ACL SETUSER`` arguments of docs/settings.md, for user ``reconcile``."""
    (line,) = [ln for ln in DOC.read_text().splitlines() if ln.startswith("ACL SETUSER ")]
    return line.split()[2:]


@pytest.fixture
def acl_url(redis_url: str, namespace: str) -> Iterator[str]:
    """A Redis URL logging in as a fresh user allowed exactly the documented rule,
    with the namespace of this test in its key pattern."""
    admin = redis.Redis.from_url(redis_url)
    user, password = f"rtest_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    rule = [a.replace("{reconcile}", "{" + namespace + "}").replace(">PASSWORD", ">" + password)
            for a in documented_rule()[1:]]
    assert f"~{{{namespace}}}:*" in rule
    admin.execute_command("ACL", "SETUSER", user, *rule)
    host = re.sub(r"^redis://([^/]*@)?", "", redis_url)
    try:
        yield f"redis://{user}:{password}@{host}"
    finally:
        admin.execute_command("ACL", "DELUSER", user)


@pytest.fixture
def acl_settings(pg_settings: Settings, acl_url: str) -> Settings:
    s = pg_settings.with_overrides(redis_url=acl_url)
    use_settings(s)
    return s


def test_the_user_may_not_touch_other_keys(acl_settings: Settings) -> None:
    """The rule really restricts: a key outside the namespace is refused."""
    client = redis.Redis.from_url(acl_settings.redis_url)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.get("not-our-key")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.config_set("maxmemory-policy", "allkeys-lru")


def test_everything_runs_as_the_namespace_user(
    acl_settings: Settings, app_engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    acl_broker = Broker(acl_settings)
    # enqueue (plain jobs, one in the scheduled set) and a pass
    Record.perform_bulk([["a"], ["b"], ["c"]])
    later = Record.perform_in(3600, "later")
    with app_engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, 6)])
    result = run_pass(ProcessItem, trigger="manual", settings=acl_settings)
    assert (result.found, result.enqueued, result.error) == (5, 5, None)
    # a scheduler round (epoch, INFO run_id/evicted_keys, claims, switch mirror)
    Scheduler(acl_settings, [ProcessItem], broker=acl_broker).run_once()
    # a worker draining both queues (fetch, claim, promote, reap, heartbeat, release)
    with caplog.at_level(logging.WARNING, logger="reconcile.broker"):
        worker = Worker(acl_settings, [QueueSpec("default"), QueueSpec("items")], broker=acl_broker)
        worker.start()
    try:
        done = _wait(lambda: set(counts(acl_broker)) >= {"a", "b", "c"}
                     and acl_broker.queue_stats(["items"])[0][1] == 0)
        assert done, counts(acl_broker)
    finally:
        worker.stop(5)
    # CONFIG GET is not allowed: one warning, and the worker ran anyway
    warned = [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    # a single-queue worker's idle pickup (BLMOVE, CLIENT ID / CLIENT UNBLOCK at stop)
    single = Worker(acl_settings, [QueueSpec("default")], broker=acl_broker)
    single.start()
    try:
        Record.perform_async("d")
        assert _wait(lambda: "d" in counts(acl_broker))
    finally:
        single.stop(5)
    env = {"RECONCILE_REDIS_URL": acl_settings.redis_url, "RECONCILE_NAMESPACE": acl_settings.namespace,
           "RECONCILE_DATABASE_URL": acl_settings.database_url}
    runner = CliRunner()
    status = runner.invoke(main, ["status", "--json"], env=env)
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["scheduled"] >= 1  # "later", at least
    # the dashboard's status document
    body = _get(Dashboard(acl_settings), "/status.json")
    assert json.loads(body)["namespace"] == acl_settings.namespace
    # set listings and actions (ZRANGE, ZSCAN for a jid without its score, the set_move script)
    listed = runner.invoke(main, ["scheduled", "list", "--json"], env=env)
    assert listed.exit_code == 0 and str(later) in listed.output, listed.output
    moved = runner.invoke(main, ["scheduled", "run", str(later)], env=env)
    assert moved.exit_code == 0, moved.output
    # where is my job (locate.lua: only the rule's commands; the job was moved to its queue)
    where = runner.invoke(main, ["job", str(later), "--json"], env=env)
    assert where.exit_code == 0, where.output
    assert json.loads(where.output)["state"] == "queued"
    assert str(later) not in str(acl_broker.set_entries("scheduled", 0, -1)), "moved to its queue"
    flushed = runner.invoke(main, ["flush", "--yes", "--app", "tests.reconciled_app"], env=env)
    assert flushed.exit_code == 0, flushed.output
    assert acl_broker.set_sizes()["scheduled"] == 0


def test_enqueue_replicas_runs_as_the_namespace_user(acl_settings: Settings) -> None:
    """WAIT is in the rule: without a replica the wait times out (NotReplicated), it is
    not refused as a permission error."""
    from reconcile.broker import PushRecord
    from reconcile.errors import NotReplicated

    waiting = Broker(acl_settings.with_overrides(enqueue_replicas=1, enqueue_replicas_timeout=0.01))
    with pytest.raises(NotReplicated, match="0 of 1 replicas"):
        waiting.push([PushRecord("default", 0, "", 0, b"{}")])


def test_a_missing_permission_names_the_command_and_the_user(acl_settings: Settings, redis_url: str) -> None:
    user = re.match(r"redis://([^:]+):", acl_settings.redis_url).group(1)  # type: ignore[union-attr]
    redis.Redis.from_url(redis_url).execute_command("ACL", "SETUSER", user, "-zcard")
    env = {"RECONCILE_REDIS_URL": acl_settings.redis_url, "RECONCILE_NAMESPACE": acl_settings.namespace}
    result = CliRunner().invoke(main, ["status"], env=env)
    assert result.exit_code == 2
    assert "not allowed" in result.output and "'zcard'" in result.output and repr(user) in result.output
    assert "unavailable" not in result.output and "cannot reach" not in result.output
    assert acl_settings.redis_url.split(":")[2].split("@")[0] not in result.output  # the password


def _wait(predicate: Any, timeout: float = 20.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _get(app: Dashboard, path: str) -> bytes:
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "QUERY_STRING": "", "SCRIPT_NAME": "",
               "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": "http",
               "SERVER_NAME": "localhost", "SERVER_PORT": "80", "HTTP_HOST": "localhost"}
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, *a: status.append(s)))  # type: ignore[arg-type]
    assert status == ["200 OK"], body
    return body
