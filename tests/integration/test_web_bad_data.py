"""Bad bytes in Redis never blind an inspection surface: the bad item is shown as bad,
raw and escaped, and the rest of the page, document or command works.

Each case writes one thing nothing in reconcile would write (another client, a bug, an
operator's redis-cli), then every surface that reads it is checked."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from reconcile.api import status
from reconcile.broker import Broker
from reconcile.cli import main
from reconcile.config import Settings
from reconcile.web import Dashboard
from tests.jobs_core import Record
from tests.web_client import call, same_site


def cli(settings: Settings, *args: str) -> Any:
    env = {"RECONCILE_REDIS_URL": settings.redis_url, "RECONCILE_NAMESPACE": settings.namespace}
    return CliRunner().invoke(main, list(args), env=env)


def bad_queue_name(broker: Broker) -> str:
    broker.redis.sadd(broker.keys.queues, b"bad\xff<q>")
    return "b'bad\\xff<q>'"


def bad_pid(broker: Broker) -> str:
    broker.heartbeat("h:1:ab", {"hostname": "h", "pid": "x<y", "queues": "default", "concurrency": 5,
                                "busy": 0, "started_at": "1e308", "beat": "nan"})
    return "'x<y'"


def garbage_record(broker: Broker) -> str:
    broker.redis.sadd(broker.keys.procs, "h:2:cd")
    broker.redis.set(broker.keys.proc("h:2:cd"), b'{"garbage": [')
    return "WRONGTYPE"


def bad_stamp(broker: Broker) -> str:
    broker.redis.rpush(broker.keys.queue("default"),  # the oldest job, whose age is the latency
                       orjson.dumps({"class": "x.Y", "args": [], "jid": "j1", "queue": "default",
                                     "enqueued_at": "x<z"}))
    return "'x<z'"


def bad_counter(broker: Broker) -> str:
    broker.redis.set(broker.keys.stat("processed"), b"lots<")
    return "b'lots<'"


CASES: dict[str, Callable[[Broker], str]] = {
    "non-UTF-8 queue name": bad_queue_name, "non-numeric pid": bad_pid,
    "process record not a hash": garbage_record, "timestamp not a number": bad_stamp,
    "counter not a number": bad_counter,
}


@pytest.mark.parametrize("case", CASES)
def test_status_and_its_pages_show_a_bad_value_and_the_rest(
    settings: Settings, broker: Broker, case: str
) -> None:
    Record.perform_async("fine")  # the rest: one good queue, one job
    raw = CASES[case](broker)
    doc = status(settings, broker)
    shown = [*doc.get("invalid_counters", {}).values()]
    for entry in (*doc["queues"], *doc["processes"]):
        shown += entry.get("invalid", {}).values()
    assert any(raw in value for value in shown), f"{raw} not in {shown}"
    assert any(q["name"] == "default" and q["size"] >= 1 for q in doc["queues"])
    app = Dashboard(settings)
    code, _, page = call(app, "/")
    assert code == 200 and ">default</a>" in page and 'class="bad"' in page
    assert html.escape(raw) in page and "<q>" not in page and "x<y" not in page
    code, _, body = call(app, "/status.json")
    assert code == 200 and json.loads(body)["queues"], "valid JSON (no NaN)"
    assert "NaN" not in body and "Infinity" not in body
    code, _, metrics = call(app, "/metrics")
    assert code == 200 and 'reconcile_queue_size{queue="default"}' in metrics
    result = cli(settings, "status")
    assert result.exit_code == 0 and "INVALID" in result.output and raw in result.output
    assert cli(settings, "status", "--json").exit_code == 0


def test_a_crafted_enqueued_at_shows_raw_on_the_queue_page(settings: Settings, broker: Broker) -> None:
    broker.redis.sadd(broker.keys.queues, "default")
    for stamp in (-1, 1e308, "x<z"):
        broker.redis.lpush(broker.keys.queue("default"), orjson.dumps(
            {"class": "x.Y", "args": [], "jid": f"j{stamp}", "queue": "default", "enqueued_at": stamp}))
    code, _, page = call(Dashboard(settings), "/queue?name=default")
    assert code == 200
    for shown in ("invalid: -1", "invalid: 1e+308", "invalid: &#x27;x&lt;z&#x27;"):
        assert shown in page
    assert status(settings, broker)["queues"][0]["latency"] == 0.0


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def poison_sets(broker: Broker) -> dict[str, str]:
    """A member per crafted thing, with the jid of each."""
    members = {
        "deep": ({"args": [nested(300)]}, 1000.0),
        "huge-score": ({"args": [1]}, 1e308),
        "inf-score": ({"args": [2]}, float("inf")),
        "negative": ({"args": [3], "failed_at": -1, "created_at": "x"}, -1.0),
        "at-huge": ({"args": [4], "at": 1e308}, 2000.0),
    }
    for which, key in (("dead", broker.keys.dead), ("scheduled", broker.keys.schedule),
                       ("retry", broker.keys.retry)):
        for jid, (extra, score) in members.items():
            job = {"class": "tests.jobs_core.Record", "jid": f"{which}-{jid}", "queue": "default",
                   "error_class": "E", "error_message": "<m>", **extra}
            broker.redis.zadd(key, {json.dumps(job).encode(): score})
        broker.redis.zadd(key, {b"\xff not json <b>": 3000.0})
    return {jid: jid for jid in members}


@pytest.mark.parametrize("which, command", [("dead", "dead"), ("scheduled", "scheduled"),
                                            ("retry", "retries")])
def test_set_views_survive_crafted_members_and_scores(
    settings: Settings, broker: Broker, which: str, command: str
) -> None:
    poison_sets(broker)
    app = Dashboard(settings)
    code, _, page = call(app, f"/{which}")
    assert code == 200 and f"{which}-deep" in page and "invalid: 1e+308" in page
    assert "invalid: inf" in page and "&lt;m&gt;" in page and "<b>" not in page
    assert 'name="score" value="1e+308"' in page, "the button carries the exact score"
    result = cli(settings, command, "list", "--limit", "10")
    assert result.exit_code == 0, result.output
    assert "INVALID time 1e+308" in result.output and "INVALID time inf" in result.output
    assert cli(settings, command, "list", "--json").exit_code == 0


@pytest.mark.parametrize("which, move", [("dead", "retry"), ("scheduled", "run"), ("retry", "run")])
def test_set_actions_survive_crafted_members_and_scores(
    settings: Settings, broker: Broker, which: str, move: str
) -> None:
    poison_sets(broker)
    app = Dashboard(settings)
    # one by one, each with the score its button carries
    for jid, score in ((f"{which}-huge-score", "1e+308"), (f"{which}-inf-score", "inf"),
                       (f"{which}-negative", "-1.0"), (f"{which}-at-huge", "2000.0")):
        code, headers, _ = call(app, f"/{which}/{move}", "POST", {"jid": jid, "score": score},
                                **same_site())
        assert code == 303 and "1%20jobs" in headers["Location"], (jid, headers["Location"])
    # a payload too deep to re-encode is reported, left, and deletable
    code, headers, _ = call(app, f"/{which}/{move}", "POST", {"jid": f"{which}-deep", "score": "1000"},
                            **same_site())
    assert code == 303 and "0%20jobs" in headers["Location"] and "not%20jobs%20left" in headers["Location"]
    code, headers, _ = call(app, f"/{which}/delete", "POST", {"jid": f"{which}-deep", "score": "nan"},
                            **same_site())
    assert code == 303 and "deleted%201%20jobs" in headers["Location"], "nan: found by scan instead"
    code, headers, _ = call(app, f"/{which}/delete", "POST", {"all": "1"}, **same_site())
    assert code == 303 and broker.set_sizes()[which] == 0, "the record that is not JSON too"
