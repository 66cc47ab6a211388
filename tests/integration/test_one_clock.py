"""One clock: every run-at is on the Redis server's clock, whatever this host's says.

Each test skews this process's ``time.time()`` by 300 s (fast or slow) and checks
where a delay lands against Redis's ``TIME``: ``perform_in`` and ``set(wait=)``,
retries and re-schedules settled through ``fetch.lua``, promotion, a pass's jitter
delays. ``perform_at`` names an absolute time and keeps it. On a host-clock run-at,
each of these is 300 s off and the test fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest

from reconcile import Job
from reconcile.broker import Broker, PushRecord, SettleOp
from reconcile.broker.pass_push import PassPusher

SKEW = 300.0


class Mail(Job):
    def perform(self, user_id: int) -> None:
        pass


def redis_now(broker: Broker) -> float:
    seconds, micros = broker.redis.time()
    return seconds + micros / 1e6


@pytest.fixture(params=[+SKEW, -SKEW], ids=["host-fast", "host-slow"])
def skew(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    """This process's wall clock, ``SKEW`` s fast or slow (Redis's is right)."""
    real = time.time
    offset = float(request.param)
    monkeypatch.setattr(time, "time", lambda: real() + offset)
    yield offset


def scores(broker: Broker, which: str) -> list[float]:
    return [score for _, score in broker.set_entries(which, 0, -1)]


def test_perform_in_and_wait_count_from_the_redis_clock(broker: Broker, skew: float) -> None:
    before = redis_now(broker)
    Mail.perform_in(60, 1)
    Mail.set(wait=120).perform_async(2)
    after = redis_now(broker)
    low, high = sorted(scores(broker, "scheduled"))
    assert before + 60 <= low <= after + 60
    assert before + 120 <= high <= after + 120


def test_perform_at_keeps_the_absolute_time_it_was_given(broker: Broker, skew: float) -> None:
    when = redis_now(broker) + 3600
    Mail.perform_at(when, 1)
    Mail.set(wait_until=when + 1).perform_async(2)
    assert sorted(scores(broker, "scheduled")) == [when, when + 1]


def test_a_past_perform_at_runs_now_by_the_redis_clock(broker: Broker, skew: float) -> None:
    """Due or not is Redis's call: a time Redis has passed is queued at once, even where
    this host's slow clock says it is still ahead."""
    Mail.perform_at(redis_now(broker) - 10, 1)
    assert scores(broker, "scheduled") == []
    assert len(broker.queue_entries("default", 10)) == 1


def test_retries_and_reschedules_are_delays_on_the_redis_clock(broker: Broker, skew: float) -> None:
    payloads = [orjson.dumps({"queue": "default", "jid": f"j{i}", "class": "t.Mail", "args": [i]})
                for i in range(2)]
    broker.push([PushRecord("default", 0, "", 0, p) for p in payloads])
    first, second = broker.exchange("p", ["default"], 2)
    before = redis_now(broker)
    broker.settle("p", [SettleOp.retry(first.field, 30, first.raw, "lk"),
                        SettleOp.reschedule(second.field, 2, second.raw)])
    after = redis_now(broker)
    [retry_at] = scores(broker, "retry")
    [again_at] = scores(broker, "scheduled")
    assert before + 30 <= retry_at <= after + 30
    assert before + 2 <= again_at <= after + 2
    # the uniqueness lock outlives the backoff by 600 s, on Redis's clock too
    assert 629_000 <= broker.redis.pttl(broker.keys.unique("lk")) <= 630_000


def test_promotion_is_due_by_the_redis_clock(broker: Broker, skew: float) -> None:
    Mail.perform_in(60, 1)
    Mail.perform_in(-1, 2)  # no delay: queued at once
    assert broker.promote() == (0, 0, False), "a fast host must not promote a job due in 60 s"
    key = broker.keys.schedule
    member = broker.redis.zrange(key, 0, 0)[0]
    broker.redis.zadd(key, {member: redis_now(broker) - 0.001}, xx=True)
    assert broker.promote() == (1, 0, False), "a slow host must not hold back a due job"


def test_pass_jitter_delays_count_from_the_redis_clock(broker: Broker, skew: float) -> None:
    pusher = PassPusher(broker)
    jobs = [{"queue": "items", "jid": f"p{i}", "class": "t.Item", "args": [i]} for i in range(3)]
    payloads = b"".join(orjson.dumps(job) + b"\n" for job in jobs)
    before = redis_now(broker)
    assert pusher.push(job="t.Item", queue="items", digests=b"", width=0, members=b"", payloads=payloads,
                       count=3, delays=[0.0, 5.0, 10.0]) == b"111"
    after = redis_now(broker)
    low, high = sorted(scores(broker, "scheduled"))
    assert before + 5 <= low <= after + 5
    assert before + 10 <= high <= after + 10
    assert len(broker.queue_entries("items", 10)) == 1, "a delay of 0 is queued at once"
