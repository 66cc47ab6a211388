"""Scenario 9: poison pushed straight into the Redis queue, between good jobs.

Each bad entry must land in the dead set with a reason, the worker must stay up, and
good jobs must keep their throughput: measured on the same worker, with and without
poison interleaved (one bad entry every 50 good jobs).
"""

from __future__ import annotations

import time

import orjson

from reconcile import config
from tests.fault.harness import SOAK, World
from tests.fault.oracle_app import Oracle
from tests.fault.results import record

GOOD = 6_000 if SOAK else 1_500
EVERY_NTH = 50


def envelope(cls: str, args: list[object]) -> bytes:
    return orjson.dumps({"queue": "oracle", "jid": "poison" + "0" * 18, "class": cls, "args": args})


POISON: dict[str, tuple[bytes, str]] = {
    # kind: (raw entry, expected error_class)
    "not JSON": (b"this is not json {", "InvalidPayload"),
    "invalid UTF-8": (b'{"queue":"oracle","jid":"p","class":"\xff\xfe","args":[1]}', "InvalidPayload"),
    "JSON not an object": (b"[1, 2, 3]", "InvalidPayload"),
    "unknown class": (envelope("evil.Module", [1]), "UnknownJobClass"),
    "wrong arity": (envelope("fault.Oracle", [1, 2]), "ArgumentError"),
    "key of the wrong type (3.5 for an integer)": (envelope("fault.Oracle", [3.5]), "InvalidKey"),
    "key that is no number": (envelope("fault.Oracle", ["seven"]), "InvalidKey"),
    "key that is a boolean": (envelope("fault.Oracle", [True]), "InvalidKey"),
    "20 MB payload": (envelope("fault.Oracle", ["x" * 20_000_000]), "InvalidPayload"),
    "deeply nested JSON": (b'{"queue":"oracle","jid":"p","class":"fault.Oracle","args":['
                           + b"[" * 100_000 + b"]" * 100_000 + b"]}", "InvalidPayload"),
}


def push_good(world: World, keys: range, poison: list[bytes]) -> None:
    """Enqueue ``keys`` (the normal client path), one poison entry after every
    ``EVERY_NTH`` good jobs while poison remains."""
    queue = world.broker.keys.queue("oracle")
    todo = list(poison)
    for start in range(keys.start, keys.stop, EVERY_NTH):
        Oracle.perform_bulk([[k] for k in range(start, min(start + EVERY_NTH, keys.stop))])
        if todo:
            world.redis.lpush(queue, todo.pop())


def test_poison_in_the_queue(world: World) -> None:
    config.use_settings(world.settings)
    worker = world.worker(concurrency=4)
    world.wait_registered(worker)
    # baseline: good jobs alone
    world.seed(GOOD)
    t0 = time.monotonic()
    push_good(world, range(1, GOOD + 1), [])
    world.wait(lambda: world.pending() == 0, 120, "baseline keys done")
    clean_rate = GOOD / (time.monotonic() - t0)
    # the same, with every kind of poison interleaved (several of each, one 20 MB)
    entries = [raw for kind, (raw, _) in POISON.items() for _ in range(1 if "20 MB" in kind else 3)]
    world.seed(GOOD, start=GOOD + 1)
    t0 = time.monotonic()
    push_good(world, range(GOOD + 1, 2 * GOOD + 1), entries)
    world.wait(lambda: world.pending() == 0, 120, "keys done with poison interleaved")
    poisoned_rate = GOOD / (time.monotonic() - t0)
    dead = world.wait(lambda: len(got := world.broker.set_entries("dead", 0, -1)) >= len(entries) and got,
                      30, "every poison entry in the dead set")
    records = [orjson.loads(m) for m, _ in dead]
    classes = sorted(r.get("error_class", "") for r in records)
    assert all(r.get("error_message") for r in records), "each dead entry says why"
    assert classes == sorted(cls for kind, (_, cls) in POISON.items()
                             for _ in range(1 if "20 MB" in kind else 3))
    assert worker.alive()
    f = world.figures()
    ratio = poisoned_rate / clean_rate
    record("9", f"poison: {len(entries)} bad entries ({len(POISON)} kinds) among 2 x {GOOD:,} good jobs",
           f, heal=f"good jobs {poisoned_rate:.0f}/s with poison vs {clean_rate:.0f}/s without "
                   f"({ratio:.0%})",
           heal_seconds=None, target="worker stays up; each bad entry dead with a reason; "
                                     "throughput kept",
           notes="dead reasons: " + ", ".join(sorted(set(classes))))
    assert f.lost == 0
    assert f.dup_effects == 0
    assert ratio >= 0.6, "poison must not slow good jobs down much"
