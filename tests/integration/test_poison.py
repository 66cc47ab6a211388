"""Garbage in the queues: each bad entry goes dead with a reason; the worker carries on.

Entries are pushed straight into Redis, as a buggy producer in another language, a
hand-edited key or a corrupted restore would leave them.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from reconcile import Job
from reconcile.broker import Broker
from reconcile.config import Settings
from tests.jobs_core import Record, counts, running_worker, wait_for


class TwoArgs(Job):
    name = "poison.TwoArgs"

    def perform(self, a: int, b: int = 0) -> None:
        pass


class AlwaysFails(Job):
    name = "poison.AlwaysFails"

    def perform(self) -> None:
        raise RuntimeError("fails")


def envelope(cls: str, args: Any, **extra: Any) -> bytes:
    return orjson.dumps({"queue": "default", "jid": "0123456789abcdef01234567", "class": cls,
                         "args": args, **extra})


BAD: dict[str, tuple[bytes, str, str]] = {
    # name: (raw entry, expected error_class, fragment of the reason)
    "not json": (b"this is not json", "InvalidPayload", "not valid JSON"),
    "invalid utf-8": (b'{"queue":"default","jid":"j","class":"\xff\xfe","args":[]}',
                      "InvalidPayload", "not valid JSON"),
    "json array": (b"[1,2,3]", "InvalidPayload", "not an object"),
    "json string": (b'"hello"', "InvalidPayload", "not an object"),
    "empty": (b"", "InvalidPayload", "not valid JSON"),
    "no class": (b'{"queue":"default","jid":"j","args":[]}', "InvalidPayload", "'class'"),
    "args not a list": (envelope("core.Record", {"a": 1}), "InvalidPayload", "'args' list"),
    "unknown class": (envelope("evil.Module", []), "UnknownJobClass", "evil.Module"),
    "too few args": (envelope("poison.TwoArgs", []), "ArgumentError", "takes 1 to 2"),
    "too many args": (envelope("poison.TwoArgs", [1, 2, 3]), "ArgumentError", "has 3"),
    "deep nesting": (b"[" * 100_000, "InvalidPayload", "not valid JSON"),
    "deep args": (b'{"queue":"default","jid":"j","class":"core.Record","args":['
                  + b"[" * 100_000 + b"]}", "InvalidPayload", "not valid JSON"),
    "oversize": (envelope("core.Record", ["x" * 1_100_000]), "InvalidPayload", "max_payload_bytes"),
    "lock not a string": (envelope("core.Record", ["lock"], lock={"a": [1]}),
                          "InvalidPayload", "'lock'"),
    "retry not bool/int": (envelope("poison.AlwaysFails", [], retry="often"),
                           "InvalidPayload", "'retry'"),
    "retry null": (envelope("poison.AlwaysFails", [], retry=None), "InvalidPayload", "'retry'"),
    "retry_count not int": (envelope("poison.AlwaysFails", [], retry_count="two"),
                            "InvalidPayload", "'retry_count'"),
}


def dead_entries(broker: Broker) -> list[dict[str, Any]]:
    return [orjson.loads(m) for m, _ in broker.set_entries("dead", 0, -1)]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_entry_goes_dead_with_a_reason(settings: Settings, broker: Broker, case: str) -> None:
    raw, error_class, fragment = BAD[case]
    queue = broker.keys.queue("default")
    # good, bad, good: the bad one sits between jobs that must still run
    Record.perform_async("before")
    broker.redis.lpush(queue, raw)
    Record.perform_async("after")
    with running_worker(settings, concurrency=2) as worker:
        wait_for(lambda: broker.set_sizes()["dead"] == 1, what=f"{case} dead")
        wait_for(lambda: len(counts(broker)) == 2, what="good jobs")
        wait_for(lambda: broker.leased_count(worker.proc_id) == 0, what="all settled")
        wait_for(lambda: worker.busy == 0, what="no thread stuck on the bad entry")
        # the worker is still healthy: a new job still runs
        Record.perform_async("later")
        wait_for(lambda: "later" in counts(broker), what="job after the poison")
    assert counts(broker) == {"before": 1, "after": 1, "later": 1}
    [entry] = dead_entries(broker)
    assert entry["error_class"] == error_class, entry
    assert fragment in entry["error_message"], entry["error_message"]
    assert entry["failed_at"] > 0
    if error_class == "InvalidPayload":
        assert entry["raw"] == raw[:2000].decode("utf-8", "replace"), "an excerpt is kept"
        assert entry["raw_bytes"] == len(raw)
    assert broker.redis.llen(queue) == 0


def test_many_bad_entries_interleaved_with_good_jobs(settings: Settings, broker: Broker) -> None:
    queue = broker.keys.queue("default")
    good = 0
    for raw, _, _ in BAD.values():
        Record.perform_async(f"g{good}")
        broker.redis.lpush(queue, raw)
        good += 1
    with running_worker(settings, concurrency=4) as worker:
        wait_for(lambda: broker.set_sizes()["dead"] == len(BAD), timeout=10, what="all dead")
        wait_for(lambda: len(counts(broker)) == good, what="good jobs")
        wait_for(lambda: broker.leased_count(worker.proc_id) == 0, what="all settled")
    reasons = sorted(e["error_class"] for e in dead_entries(broker))
    print(f"\n{len(BAD)} poison entries -> dead set ({', '.join(sorted(set(reasons)))}); "
          f"{good} good jobs ran")
    assert set(counts(broker).values()) == {1}


def test_poison_in_the_retry_set_is_promoted_and_handled(settings: Settings, broker: Broker) -> None:
    """Garbage in the scheduled/retry sets never wedges promotion."""
    import time

    now = time.time() - 1
    broker.redis.zadd(broker.keys.retry, {b"garbage": now, envelope("core.Record", ["r"]): now})
    broker.redis.zadd(broker.keys.schedule, {b'{"no":"queue"}': now})
    with running_worker(settings):
        wait_for(lambda: "r" in counts(broker), what="good retry ran")
        wait_for(lambda: broker.set_sizes()["dead"] == 2, what="garbage dead")
    assert broker.set_sizes()["retry"] == 0 and broker.set_sizes()["scheduled"] == 0
    reasons = sorted(e["error_message"] for e in dead_entries(broker))
    assert reasons == ["a retry entry names no queue", "a schedule entry names no queue"]
