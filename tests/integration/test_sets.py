"""The sets from the operator's side: ``reconcile dead list | retry | delete`` and
:mod:`reconcile.sets` (the dashboard's buttons).

A retried dead job goes back to the end of its queue for one more attempt (Sidekiq's
"retry now"): its retry count is lowered by one, its uniqueness fields are dropped,
and a record that is not a job is reported and left in place. Scheduled and retry-set
jobs can be run now or deleted; a deleted one's uniqueness lock is released.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import orjson
import pytest
from click.testing import CliRunner

from reconcile import Job, sets
from reconcile.broker import Broker
from reconcile.cli import main
from reconcile.config import Settings
from reconcile.sets import retry_payload
from tests.jobs_core import running_worker, wait_for


class Flaky(Job):
    """Fails while ``failures_left`` is above zero, then succeeds."""

    name = "sets.Flaky"
    retry = 1
    failures_left: ClassVar[int] = 0
    runs: ClassVar[list[tuple[int, int | None]]] = []  # (arg, retry_count seen)

    def perform(self, n: int) -> None:
        type(self).runs.append((n, self.payload.get("retry_count")))
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            raise RuntimeError(f"flaky {n}")

    def retry_in(self, count: int, exc: BaseException) -> Any:
        return 0  # retry at once: the test does not wait out a backoff


class Other(Job):
    name = "sets.Other"
    retry = 0

    def perform(self, n: int) -> None:
        raise RuntimeError("other")


@pytest.fixture(autouse=True)
def _reset() -> None:
    Flaky.failures_left = 0
    Flaky.runs = []


def dead(broker: Broker) -> list[dict[str, Any]]:
    return [orjson.loads(m) for m, _ in broker.set_entries("dead", 0, -1)]


def kill(settings: Settings, broker: Broker, *jobs: tuple[type[Job], int]) -> list[str]:
    """Run each (class, arg) until it is in the dead set; returns the jids."""
    jids = []
    for cls, n in jobs:
        if cls is Flaky:
            Flaky.failures_left += 2  # the first run and its one retry
        jids.append(cls.perform_async(n))
    with running_worker(settings):
        wait_for(lambda: broker.set_sizes()["dead"] == len(jobs), what="jobs dead")
    return [str(j) for j in jids]


def cli(settings: Settings, *args: str) -> Any:
    # the setting app: --class names are checked against the classes this module registers
    env = {"RECONCILE_REDIS_URL": settings.redis_url, "RECONCILE_NAMESPACE": settings.namespace,
           "RECONCILE_APP": Flaky.__module__}
    return CliRunner().invoke(main, ["dead", *args], env=env)


def test_retried_dead_job_gets_one_more_attempt_and_can_succeed(
    settings: Settings, broker: Broker
) -> None:
    [jid] = kill(settings, broker, (Flaky, 1))
    [job] = dead(broker)
    assert job["jid"] == jid and job["retry_count"] == 1, "died after its one retry"
    out = cli(settings, "retry", jid)
    assert out.exit_code == 0, out.output
    assert "retried 1 jobs" in out.output
    assert broker.set_sizes()["dead"] == 0
    with running_worker(settings):
        wait_for(lambda: len(Flaky.runs) == 3, what="the retried run")
    assert Flaky.runs == [(1, None), (1, 0), (1, 0)], "run, retry, then the operator's retry"
    assert broker.set_sizes() == {"scheduled": 0, "retry": 0, "dead": 0}
    assert broker.counters()["processed"] == 1


def test_retried_dead_job_that_fails_again_dies_again_at_once(
    settings: Settings, broker: Broker
) -> None:
    [jid] = kill(settings, broker, (Flaky, 1))
    Flaky.failures_left = 1
    assert sets.retry_dead([jid], settings=settings).changed == 1
    with running_worker(settings):
        wait_for(lambda: broker.set_sizes()["dead"] == 1, what="dead again")
    [job] = dead(broker)
    assert job["jid"] == jid and job["retry_count"] == 1 and job["error_message"] == "flaky 1"
    assert len(Flaky.runs) == 3, "one attempt, no new round of retries"
    assert broker.set_sizes()["retry"] == 0


def test_retry_payload_lowers_the_count_and_drops_uniqueness() -> None:
    base = {"queue": "q", "class": "c", "args": [1], "jid": "j", "enqueued_at": 1.0,
            "error_class": "E", "error_message": "m"}
    now = time.time()
    locked = {**base, "retry_count": 3, "lock": "d", "unique_until": "success"}
    once = orjson.loads(retry_payload(locked, now))
    assert once == {**base, "retry_count": 2, "enqueued_at": now}
    first = orjson.loads(retry_payload({**base, "retry_count": 0}, now))
    assert "retry_count" not in first, "died at its first failure: counts as new again"
    assert next(iter(first)) == "queue", "key order kept (promote.lua reads the queue first)"


def test_retry_all_of_one_class_leaves_the_others(settings: Settings, broker: Broker) -> None:
    jids = kill(settings, broker, (Flaky, 1), (Flaky, 2), (Other, 3))
    out = cli(settings, "retry", "--all", "--class", "sets.Flaky")
    assert out.exit_code == 0, out.output
    assert "retried 2 jobs" in out.output
    assert [j["jid"] for j in dead(broker)] == [jids[2]]
    queued = [orjson.loads(r) for r in broker.queue_entries("default")]
    assert sorted(j["jid"] for j in queued) == sorted(jids[:2])
    assert all(list(j)[:2] == ["queue", "jid"] for j in queued), "reap.lua reads queue, then jid"


def test_unknown_jids_are_reported_and_nothing_else_moves(settings: Settings, broker: Broker) -> None:
    [jid] = kill(settings, broker, (Other, 1))
    out = cli(settings, "retry", "nope")
    assert out.exit_code == 0, out.output
    assert "retried 0 jobs" in out.output and "not in the dead set: nope" in out.output
    assert [j["jid"] for j in dead(broker)] == [jid]


def test_records_that_are_not_jobs_are_left_and_can_be_deleted(
    settings: Settings, broker: Broker
) -> None:
    [jid] = kill(settings, broker, (Other, 1))
    broker.redis.zadd(broker.keys.dead, {b"not json at all": time.time(),
                                         orjson.dumps({"queue": "default", "class": None,
                                                       "error_class": "InvalidPayload"}): time.time()})
    change = sets.retry_dead(settings=settings)
    assert change.changed == 1 and len(change.not_retryable) == 2
    assert all("not a job payload" in why for _, why in change.not_retryable)
    assert broker.set_sizes()["dead"] == 2, "the two records stay"
    assert [orjson.loads(r)["jid"] for r in broker.queue_entries("default")] == [jid]
    out = cli(settings, "delete", "--all")
    assert out.exit_code == 0, out.output
    assert "deleted 2 jobs" in out.output and broker.set_sizes()["dead"] == 0


def test_a_job_is_moved_once_by_concurrent_retries(settings: Settings, broker: Broker) -> None:
    kill(settings, broker, (Other, 1))
    [(member, _)] = broker.set_entries("dead", 0, -1)
    move = (member, "default", retry_payload(orjson.loads(member), time.time()))
    assert broker.set_move("dead", [move]) == [True]
    assert broker.set_move("dead", [move]) == [False], "already out of the dead set: not pushed"
    assert len(broker.queue_entries("default")) == 1


def test_dead_list_shows_the_newest_with_their_error(settings: Settings, broker: Broker) -> None:
    kill(settings, broker, (Other, 1), (Other, 2))
    newest = dead(broker)[0]
    out = cli(settings, "list", "--limit", "1")
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert len(lines) == 2 and lines[-1] == "1 shown, 2 dead"
    assert lines[0].startswith(f"{newest['jid']} sets.Other {newest['args']}".replace("'", '"'))
    assert "RuntimeError: other" in lines[0]


def test_retry_and_delete_need_jids_or_all(settings: Settings, broker: Broker) -> None:
    for action in ("retry", "delete"):
        out = cli(settings, action)
        assert out.exit_code == 2 and "give JIDs, or --all" in out.output


def test_unknown_class_dead_at_a_rolling_deploy_runs_once_retried_after_it(
    settings: Settings, broker: Broker
) -> None:
    from reconcile.broker import PushRecord

    payload = {"queue": "default", "jid": "a" * 24, "class": "sets.Deployed", "args": [5],
               "created_at": time.time(), "enqueued_at": time.time()}
    broker.push([PushRecord("default", 0, "", 0, orjson.dumps(payload))])
    with running_worker(settings):
        wait_for(lambda: broker.set_sizes()["dead"] == 1, what="dead as unknown")
    [job] = dead(broker)
    assert job["error_class"] == "UnknownJobClass"
    ran: list[int] = []

    class Deployed(Job):  # the deploy: workers now know the class
        name = "sets.Deployed"

        def perform(self, n: int) -> None:
            ran.append(n)

    assert sets.retry_dead(["a" * 24], settings=settings).changed == 1
    with running_worker(settings):
        wait_for(lambda: ran == [5], what="the retried job")
    assert broker.set_sizes()["dead"] == 0


class Later(Job):
    name = "sets.Later"
    unique_for = 600
    ran: ClassVar[list[int]] = []

    def perform(self, n: int) -> None:
        Later.ran.append(n)


def test_scheduled_jobs_run_now_keeping_their_lock(settings: Settings, broker: Broker) -> None:
    Later.ran = []
    jid = Later.perform_in(3600, 1)
    Later.perform_in(3600, 2)
    assert jid and broker.set_sizes()["scheduled"] == 2
    change = sets.run_now("scheduled", [jid], settings=settings)
    assert change.changed == 1 and broker.set_sizes()["scheduled"] == 1
    [queued] = [orjson.loads(r) for r in broker.queue_entries("default")]
    assert queued["jid"] == jid and "at" not in queued and queued["enqueued_at"] > 0
    assert Later.perform_in(3600, 1) is None, "still unique: the lock stays with the job"
    with running_worker(settings):
        wait_for(lambda: Later.ran == [1], what="the job run now")


def test_deleting_a_scheduled_job_releases_its_lock(settings: Settings, broker: Broker) -> None:
    Later.perform_in(3600, 5)
    assert Later.perform_in(3600, 5) is None, "locked"
    change = sets.delete("scheduled", settings=settings)
    assert change.changed == 1 and broker.set_sizes()["scheduled"] == 0
    assert Later.perform_in(3600, 5) is not None, "the lock went with the deleted job"


def test_a_retry_runs_now_with_its_count(settings: Settings, broker: Broker) -> None:
    Flaky.failures_left = 1
    jid = Flaky.perform_async(4)
    with running_worker(settings, poll_interval=3600.0):  # no promotion: the test runs it
        wait_for(lambda: broker.set_sizes()["retry"] == 1, what="in the retry set")
        assert sets.run_now("retry", settings=settings).changed == 1
        wait_for(lambda: len(Flaky.runs) == 2, what="the retry, run now")
    assert Flaky.runs == [(4, None), (4, 0)], "the retry kept its count"
    assert broker.set_sizes() == {"scheduled": 0, "retry": 0, "dead": 0}
    assert jid


def test_run_now_refuses_the_dead_set_and_unknown_sets(settings: Settings) -> None:
    with pytest.raises(ValueError, match="retry_dead"):
        sets.run_now("dead", settings=settings)
    with pytest.raises(ValueError, match="no set 'lost'"):
        sets.delete("lost", settings=settings)
    with pytest.raises(ValueError, match="no action 'retry'"):
        sets.act("dead", "retry", settings=settings)


def test_scheduled_and_retries_commands(settings: Settings, broker: Broker) -> None:
    later = Later.perform_in(3600, 7)
    env = {"RECONCILE_REDIS_URL": settings.redis_url, "RECONCILE_NAMESPACE": settings.namespace}
    runner = CliRunner()
    listed = runner.invoke(main, ["scheduled", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert listed.output.startswith(f"{later} sets.Later [7] ") and "1 shown, 1 scheduled" in listed.output
    ran = runner.invoke(main, ["scheduled", "run", str(later)], env=env)
    assert "queued 1 jobs" in ran.output and broker.set_sizes()["scheduled"] == 0
    assert runner.invoke(main, ["retries", "list"], env=env).output == "0 shown, 0 retry\n"
    deleted = runner.invoke(main, ["retries", "delete", "--all"], env=env)
    assert "deleted 0 jobs" in deleted.output
    usage = runner.invoke(main, ["scheduled", "delete"], env=env)
    assert usage.exit_code == 2 and "give JIDs, or --all" in usage.output


def fill_dead(broker: Broker, count: int, size: int) -> list[tuple[str, float]]:
    """``count`` dead jobs of ``size`` bytes each; returns (jid, score) of each."""
    pipe = broker.redis.pipeline(transaction=False)
    out = []
    for i in range(count):
        jid, score = f"big{i:05d}", 1_700_000_000.0 + i / 7
        job = {"class": "sets.Other", "args": ["x" * size], "jid": jid, "queue": "default",
               "error_class": "E", "error_message": "m"}
        pipe.zadd(broker.keys.dead, {orjson.dumps(job): score})
        out.append((jid, score))
    pipe.execute()
    return out


class ReadCounter:
    """Counts the set members the broker's read methods hand to their callers."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.members = 0
        self.largest_batch = 0
        for name in ("set_members_at", "set_entries"):
            monkeypatch.setattr(Broker, name, self._counted(getattr(Broker, name)))
        scan = Broker.set_scan

        def counted_scan(broker: Broker, *args: Any, **kwargs: Any) -> Any:
            for rows in scan(broker, *args, **kwargs):
                self.members += len(rows)
                self.largest_batch = max(self.largest_batch, len(rows))
                yield rows
        monkeypatch.setattr(Broker, "set_scan", counted_scan)

    def _counted(self, method: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            rows = method(*args, **kwargs)
            self.members += len(rows)
            return rows
        return wrapper


def test_one_retry_reads_the_members_at_its_score_not_the_set(
    settings: Settings, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tracemalloc

    from reconcile.sets import act

    entries = fill_dead(broker, 2000, 20_000)  # 40 MB of dead jobs
    jid, score = entries[1234]
    reads = ReadCounter(monkeypatch)
    tracemalloc.start()
    try:
        done, change = act("dead", "move", [jid], settings=settings, scores={jid: score})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (done, change.changed) == ("retried", 1)
    assert reads.members == 1, "only the member at that score was read"
    assert peak < 1_000_000, f"peak {peak:,} bytes"
    # without its score the jid is found by a scan Redis filters: still one member read
    jid, _ = entries[99]
    tracemalloc.start()
    try:
        done, change = act("dead", "delete", [jid], settings=settings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert change.changed == 1 and reads.members == 2 and peak < 1_000_000
    assert broker.set_sizes()["dead"] == 1998


def test_retry_all_works_in_bounded_batches(
    settings: Settings, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tracemalloc

    from reconcile.broker.broker import SET_BATCH
    from reconcile.sets import act

    fill_dead(broker, 20_000, 1000)  # 20 MB, 40 batches
    reads = ReadCounter(monkeypatch)
    tracemalloc.start()
    try:
        _, change = act("dead", "move", None, settings=settings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert change.changed == 20_000 and broker.set_sizes()["dead"] == 0
    assert reads.members == 20_000 and reads.largest_batch <= 2 * SET_BATCH, "COUNT is a hint"
    assert peak < 20_000 * 1000 / 2, f"peak {peak:,} bytes: a few batches, not the 20 MB set"


def test_a_button_score_that_no_longer_matches_reports_the_job_gone(
    settings: Settings, broker: Broker
) -> None:
    from reconcile.sets import act

    [(jid, score)] = fill_dead(broker, 1, 10)
    _, change = act("dead", "move", [jid], settings=settings, scores={jid: score + 1})
    assert change.changed == 0 and change.not_found == [jid]
    assert broker.set_sizes()["dead"] == 1, "not looked for elsewhere, not moved"
