"""The enqueue API against real Redis: what lands where, in how many round trips."""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis
import redis.connection

from reconcile import ArgumentError, Job, PayloadTooLarge, client_middleware
from reconcile.broker import Broker
from reconcile.config import Settings, use_settings
from reconcile.payload import PayloadTemplate
from tests.jobs_core import everything, without_jids


class Mail(Job):
    def perform(self, user_id: int, kind: str = "welcome") -> None:
        pass


class Urgent(Job):
    queue = "critical"
    retry = 3

    def perform(self, n: int) -> None:
        pass


def queued(broker: Broker, queue: str = "default") -> list[dict[str, Any]]:
    """Jobs of ``queue``, oldest (next to run) first."""
    return [orjson.loads(raw) for raw in broker.queue_entries(queue, 100_000)]


def scheduled(broker: Broker) -> list[tuple[dict[str, Any], float]]:
    return [(orjson.loads(m), s) for m, s in broker.set_entries("scheduled", 0, -1)]


def namespace_keys(broker: Broker) -> list[bytes]:
    return list(broker.redis.scan_iter(match=broker.keys.pattern))


def test_perform_async_pushes_a_sidekiq_shaped_payload(broker: Broker) -> None:
    before = time.time()
    jid = Mail.perform_async(42, "reset")
    assert jid is not None and re.fullmatch(r"[0-9a-f]{24}", jid)

    raw = broker.redis.lindex(broker.keys.queue("default"), 0)
    assert isinstance(raw, bytes)
    # the Lua scripts read queue and jid with an anchored match
    assert raw.startswith(b'{"queue":"default","jid":"' + jid.encode() + b'"')
    job = orjson.loads(raw)
    assert job["class"] == Mail.job_name == f"{Mail.__module__}.Mail"
    assert job["args"] == [42, "reset"]
    assert job["queue"] == "default"
    assert job["retry"] is True
    assert before <= job["created_at"] == job["enqueued_at"] <= time.time()
    assert "at" not in job and "lock" not in job
    assert broker.queue_names() == ["default"]
    # an idle worker is woken by a token
    assert broker.redis.llen(broker.keys.wake("default")) == 1


def test_class_options_queue_and_retry_are_carried(broker: Broker) -> None:
    Urgent.perform_async(1)
    [job] = queued(broker, "critical")
    assert job["queue"] == "critical" and job["retry"] == 3
    assert queued(broker, "default") == []


def test_perform_in_goes_to_the_scheduled_set(broker: Broker) -> None:
    before = time.time()
    jid = Mail.perform_in(60, 1)
    jid2 = Mail.perform_in(dt.timedelta(minutes=2), 2)
    (job, score), (job2, score2) = scheduled(broker)
    assert job["jid"] == jid and job2["jid"] == jid2
    assert before + 60 <= score <= time.time() + 60
    assert before + 120 <= score2 <= time.time() + 120
    # the score is Redis's clock plus the delay and decides; the payload's "at" is the
    # enqueuing host's estimate of it (the same clock here, a round trip apart)
    assert job["at"] == pytest.approx(score, abs=1.0)
    assert "enqueued_at" not in job
    assert queued(broker) == []


def test_perform_at_takes_aware_datetimes_and_epochs(broker: Broker) -> None:
    when = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    Mail.perform_at(when, 1)
    Mail.perform_at(when.astimezone(dt.timezone(dt.timedelta(hours=-5))), 2)
    Mail.perform_at(when.timestamp() + 1, 3)
    scores = {job["args"][0]: score for job, score in scheduled(broker)}
    assert scores == {1: when.timestamp(), 2: when.timestamp(), 3: when.timestamp() + 1}


def test_perform_at_refuses_naive_datetimes(broker: Broker) -> None:
    with pytest.raises(ArgumentError, match="Mail: perform_at needs an aware datetime"):
        Mail.perform_at(dt.datetime.now() + dt.timedelta(hours=1), 1)
    assert namespace_keys(broker) == []


def test_a_time_in_the_past_means_now(broker: Broker) -> None:
    Mail.perform_at(time.time() - 3600, 1)
    Mail.perform_in(-5, 2)
    assert [j["args"][0] for j in queued(broker)] == [1, 2]
    assert scheduled(broker) == []


def test_set_overrides_queue_wait_and_retry_for_one_call(broker: Broker) -> None:
    Mail.set(queue="critical").perform_async(1)
    Mail.set(queue="low", retry=0).perform_async(2)
    before = time.time()
    Mail.set(wait=30).perform_async(3)
    Mail.set(wait_until=time.time() + 90, queue="low").perform_async(4)
    Mail.perform_async(5)

    assert [(j["args"], j["queue"]) for j in queued(broker, "critical")] == [([1], "critical")]
    [low] = queued(broker, "low")
    assert low["args"] == [2] and low["retry"] == 0
    sched = {j["args"][0]: (j["queue"], s) for j, s in scheduled(broker)}
    assert sched[3][0] == "default" and before + 30 <= sched[3][1] <= time.time() + 30
    assert sched[4][0] == "low" and before + 90 <= sched[4][1] <= time.time() + 90
    assert [j["args"] for j in queued(broker)] == [[5]]
    assert broker.queue_names() == ["critical", "default", "low"]


def _count_commands(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the commands written to any Redis socket from now on (what goes on the
    wire, whichever connection or pipeline sends it)."""
    sent: list[str] = []
    real = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        data = command if isinstance(command, bytes) else b"".join(command)
        names = re.findall(rb"(?:^|\r\n)\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n", data)
        sent.extend(m.decode().upper() for m in names)
        return real(self, command, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return sent


def test_perform_bulk_is_one_round_trip_per_thousand(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    Mail.perform_async(0)  # loads the script, so NOSCRIPT retries do not blur the count
    n = 2_500
    sent = _count_commands(broker, monkeypatch)
    started = time.perf_counter()
    jids = Mail.perform_bulk([i] for i in range(1, n + 1))
    elapsed = time.perf_counter() - started
    print(f"\nperform_bulk({n}): {len(sent)} Redis commands {sent[:5]}, {elapsed * 1000:.1f} ms")
    assert sent == ["EVALSHA"] * math.ceil(n / 1000), sent
    assert len(jids) == n and all(jids) and len(set(jids)) == n
    jobs = queued(broker)
    assert [j["args"][0] for j in jobs] == list(range(n + 1)), "FIFO order kept"
    assert [j["jid"] for j in jobs[1:]] == jids


def test_bulk_with_one_bad_argument_writes_nothing(broker: Broker) -> None:
    args: list[list[Any]] = [[i] for i in range(1500)]
    args[1234] = [dt.date(2024, 1, 1)]
    with pytest.raises(ArgumentError) as info:
        Mail.perform_bulk(args)
    assert "'user_id' (args[0])" in str(info.value) and "datetime.date" in str(info.value)
    assert namespace_keys(broker) == []


def test_non_json_argument_raises_naming_argument_and_type(broker: Broker) -> None:
    with pytest.raises(ArgumentError) as info:
        Mail.perform_async(1, {"when": dt.datetime.now(dt.UTC)})
    message = str(info.value)
    assert "'kind' (args[1])['when']" in message and "datetime.datetime" in message, message
    with pytest.raises(ArgumentError, match=r"argument args\[2\] is object"):
        Spread.perform_async(1, "a", object())  # *rest: beyond the named parameters
    assert namespace_keys(broker) == []


class Spread(Job):
    def perform(self, user_id: int, *rest: Any) -> None:
        pass


def test_oversize_payload_raises_and_writes_nothing(broker: Broker) -> None:
    big = "x" * broker.settings.max_payload_bytes
    with pytest.raises(PayloadTooLarge, match="max_payload_bytes"):
        Mail.perform_async(big)
    with pytest.raises(PayloadTooLarge):
        Mail.perform_bulk([[1]] * 1500 + [[big]])  # the bad one is in the second batch
    assert namespace_keys(broker) == []


def test_jids_are_distinct_24_hex(broker: Broker) -> None:
    jids = Mail.perform_bulk([1] for _ in range(1000))
    assert len(set(jids)) == 1000
    assert all(j is not None and re.fullmatch(r"[0-9a-f]{24}", j) for j in jids)


class Locked(Job):
    unique_for = 30
    unique_until = "start"

    def perform(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(
    "enqueue",
    [
        lambda: Mail.perform_bulk([[1], [2, "x"], [3, {"a": [1.5, None, True]}]]),
        lambda: Mail.perform_in(60, 7, "é\u2028"),
        lambda: Mail.set(queue="other", retry=4).perform_async(-(2**63), "z"),
        lambda: Urgent.perform_async(2**64 - 1),
        lambda: Locked.perform_bulk([[1], [1, 2]]),
        lambda: Locked.set(wait=5, unique_until="success").perform_async([]),
    ],
    ids=["bulk", "perform_in", "set", "class-options", "unique", "unique-scheduled"],
)
@pytest.mark.parametrize("reference", ["middleware", "setting"])
def test_fast_path_writes_the_same_bytes_as_the_dict_path(
    broker: Broker, settings: Settings, monkeypatch: pytest.MonkeyPatch, enqueue: Callable[[], Any],
    reference: str,
) -> None:
    """Without client middleware, payload bytes are assembled from a PayloadTemplate's
    pre-encoded parts; with middleware, or with the setting ``fast_paths`` false, they
    are ``orjson.dumps`` of the template's reference dict. Both must be identical."""
    import reconcile.client

    monkeypatch.setattr(reconcile.client.time, "time", lambda: 1_700_000_000.25)
    built: list[str] = []  # jids of payloads built by the reference builder
    real = PayloadTemplate.reference

    def spied(self: PayloadTemplate, jid: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        built.append(jid)
        return real(self, jid, *args, **kwargs)

    monkeypatch.setattr(PayloadTemplate, "reference", spied)

    enqueue()
    fast = everything(broker)
    assert not built, "the fast path builds no dict"
    broker.flush_namespace()

    def passthrough(job_class: Any, payload: dict[str, Any], call_next: Any) -> Any:
        return call_next(payload)

    if reference == "middleware":
        client_middleware.add(passthrough)
        try:
            enqueue()
        finally:
            client_middleware.remove(passthrough)
    else:
        use_settings(settings.with_overrides(fast_paths=False))
        try:
            enqueue()
        finally:
            use_settings(settings)
    slow = everything(broker)
    assert len(built) == len(slow), "the reference path built every payload"
    assert fast and without_jids(fast) == without_jids(slow)


@pytest.mark.parametrize("queue", ["", "a b", "x|y", "{ns}"])
def test_a_malformed_queue_name_is_refused_at_enqueue(broker: Broker, queue: str) -> None:
    with pytest.raises(ArgumentError, match="queue"):
        Mail.set(queue=queue).perform_async("a@example.com")


def test_enqueue_connections_are_shared_by_threads_and_never_by_a_forked_child(
    broker: Broker,
) -> None:
    """The enqueue path keeps its own idle connections (redis-py's command path costs a
    third of a single enqueue). Many threads enqueuing at once each get a working one;
    a forked child (a pre-forking web server) opens its own instead of writing on its
    parent's sockets, and the parent's connections keep working after the child exits."""
    import multiprocessing
    import threading

    Mail.perform_async(0)
    errors: list[BaseException] = []

    def burst(base: int) -> None:
        try:
            for i in range(50):
                Mail.perform_async(base + i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=burst, args=(1000 * (t + 1),)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    idle = len(broker._free)
    assert 1 <= idle <= 9, "connections are reused, at most one per concurrent caller"

    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=Mail.perform_bulk, args=([[i] for i in range(100_000, 100_010)],))
    child.start()
    child.join(20)
    assert child.exitcode == 0
    Mail.perform_async(99)  # the parent's connections are intact
    args = sorted(job["args"][0] for job in queued(broker))
    print(f"\n{len(args)} enqueues from 8 threads, a forked child and the parent: "
          f"{idle} idle connections kept")
    assert len(args) == 1 + 8 * 50 + 10 + 1
    assert args[-10:] == list(range(100_000, 100_010))
