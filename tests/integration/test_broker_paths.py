"""The broker's fast script call (``Broker._eval`` on its own connections, see
``broker/_redis_private.py``) and its reference path (redis-py's public ``Script``
call, ``Broker(..., fast=False)``) must be indistinguishable: the same scenario run
over each leaves the same replies and the same keys and values in Redis."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from reconcile.broker import Broker, PushRecord, SettleOp
from reconcile.broker.pass_push import PassPusher
from reconcile.config import Settings

NOW = 1_800_000_000.0


def payload(jid: str, queue: str = "default") -> bytes:
    return b'{"queue":"%s","jid":"%s","class":"t.Job","args":[1]}' % (queue.encode(), jid.encode())


def scenario(broker: Broker) -> list[Any]:
    """Every hot-path script call: quick and full enqueues (a held lock, a later run),
    pass pages (probe, push, overwrite), fetch with settlements of each kind."""
    replies: list[Any] = []
    replies.append(broker.push([PushRecord("default", 0, "", 0, payload(f"q{i}")) for i in range(3)]))
    replies.append(broker.push([
        PushRecord("default", 0, "d1", 60_000, payload("l1")),
        PushRecord("default", 0, "d1", 60_000, payload("l2")),  # same lock: dropped
        PushRecord("low", NOW + 30, "", 0, payload("s1", "low")),  # absolute: kept as given
    ]))
    pusher = PassPusher(broker)
    digests = b"".join(d.encode() for d in ("a" * 32, "b" * 32))
    members = b"[1]\n[2]\n"  # the keys' pass locks (their args JSON)
    replies.append(pusher.probe("t.Job", digests, 32, members, "items", 2))
    replies.append(pusher.push(job="t.Job", queue="items", digests=digests, width=32, members=members,
                               payloads=payload("p1", "items") + b"\n" + payload("p2", "items") + b"\n",
                               count=2, half_life_ms=30_000))
    replies.append(pusher.probe("t.Job", digests, 32, members, "items", 2))
    replies.append(pusher.push(job="t.Job", queue="items", digests=digests[:32], width=32,
                               members=b"[1]\n", payloads=payload("p3", "items") + b"\n", count=1,
                               overwrite=True, half_life_ms=30_000))
    got = broker.exchange("proc", ["default", "items"], 4)
    replies.append([(d.queue, d.raw) for d in got])
    ops = [SettleOp.ack(got[0].field, "d1"), SettleOp.retry(got[1].field, 60, got[1].raw),
           SettleOp.dead(got[2].field, got[2].raw), SettleOp.push_back(got[3].field, "default", got[3].raw)]
    more = broker.exchange("proc", ["items"], 2, ops)
    replies.append([(d.queue, d.raw) for d in more])
    replies.append(broker.settle("proc", [SettleOp.drop(d.field) for d in more]))
    replies.append(broker.settle("proc", [SettleOp.ack(got[0].field)]))  # no longer held: skipped
    return replies


def state(broker: Broker) -> dict[str, Any]:
    """Every key of the namespace and its value, with the namespace, the delivery
    numbers (which start at the clock) and the times the scripts read from Redis's
    clock (the dead set's, the retry's run-at) taken out."""
    r, out = broker.redis, {}
    for key in r.scan_iter(match=broker.keys.pattern):
        kind = r.type(key).decode()
        value: Any
        if kind == "list":
            value = r.lrange(key, 0, -1)
        elif kind == "zset" and (key.endswith(b":dead") or key.endswith(b":retry")):
            value = r.zrange(key, 0, -1)  # scored by Redis's clock at the call, which differs
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = sorted(r.smembers(key))
        elif kind == "hash" and key.endswith(b":jobs"):
            # the jid index: dead and running entries carry Redis's clock at the call
            running = rb"^(L\d)\|\d+\|(.*)\|\d+\|"
            value = {k: re.sub(rb"^D[\d.]+$", b"D<t>", re.sub(running, rb"\1|<t>|\2|N|", v))
                     for k, v in r.hgetall(key).items()}
        elif kind == "hash":
            value = {re.sub(rb"^\d+\|", b"N|", k): v for k, v in r.hgetall(key).items() if k != b"seq"}
        else:
            value = r.get(key)
        out[key.decode().replace(broker.settings.namespace, "ns")] = (kind, value)
    return out


@pytest.fixture
def brokers(settings: Settings) -> Iterator[tuple[Broker, Broker]]:
    fast = Broker(settings.with_overrides(namespace="f" + uuid.uuid4().hex[:12]))
    reference = Broker(settings.with_overrides(namespace="r" + uuid.uuid4().hex[:12]), fast=False)
    yield fast, reference
    fast.flush_namespace()
    reference.flush_namespace()


def test_fast_and_reference_script_calls_leave_the_same_redis(brokers: tuple[Broker, Broker]) -> None:
    fast, reference = brokers
    replies = scenario(fast), scenario(reference)
    assert replies[0] == replies[1]
    assert replies[0][1] == [True, False, True] and replies[0][2] == b"11" and replies[0][4] == b"00"
    assert state(fast) == state(reference)
    assert len(fast._free) >= 1, "the fast path ran on the broker's own connections"
    assert len(reference._free) == 0, "the reference path never touched them"
