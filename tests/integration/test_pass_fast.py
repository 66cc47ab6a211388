"""The fast path of a reconcile pass: template-built payloads, ``pass_enqueue.lua``,
probe-first pages, and the keyset reader that reads pages through the driver.

Specifications: a pass writes byte for byte what ``client.enqueue`` writes for the
same keys (so workers run it the same way), takes the same locks (so ``perform_async``
and a pass dedupe against each other), and leaves the normal enqueue path in charge
whenever client middleware or a testing interceptor is installed.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

import reconcile.scheduler.fast_pass as fast_pass
import reconcile.scheduler.passes as passes
from reconcile import ReconciledJob, client, client_middleware, registry, sets, testing
from reconcile.broker import Broker, SettleKind, get_broker
from reconcile.broker.pass_push import PassPusher
from reconcile.config import Settings, use_settings
from reconcile.errors import BrokerError
from reconcile.payload import decode, expand_pass_payload
from reconcile.scheduler.passes import run_pass
from reconcile.store import keyset
from reconcile.store import pending as pending_sql
from reconcile.worker.executor import Executor
from tests.jobs_core import everything
from tests.reconciled_app import MarksItemDone, ProcessItem, SyncStock, effects, items, regions

fast_metadata = sa.MetaData()
names = sa.Table(
    "fast_names", fast_metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
)


class NamedThing(ReconciledJob):
    """A text key: quotes, backslashes, non-ASCII and U+2028 must encode as orjson does."""

    every = 3600
    queue = "things"

    def pending(self) -> Select[Any]:
        return sa.select(names.c.name).where(names.c.done.is_(False))

    def perform(self, session: Session, name: str) -> None:
        session.execute(names.update().where(names.c.name == name).values(done=True))


class JitteredItem(MarksItemDone):
    """``jitter = 30``: a pass spreads its keys over the scheduled set."""

    jitter = 30.0


class UnlockedItem(MarksItemDone):
    """``unique_for = 0``: no lock, every pass enqueues every key again."""

    unique_for = 0


class ByParity(MarksItemDone):
    """A custom uniqueness identity (one lock per parity), known only to client.enqueue."""

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        pass

    @classmethod
    def lock_digest(cls, queue: str, args: list[Any]) -> str:
        return f"parity-{args[0] % 2}"


class DictKeyItem(ReconciledJob):
    """A key column holding a JSON object: digests must sort its keys, args keep them."""

    every = 3600
    queue = "items"

    def pending(self) -> Select[Any]:
        doc = sa.func.jsonb_build_object("z", items.c.id, "a", sa.literal("x"))
        return sa.select(items.c.id, sa.type_coerce(doc, JSONB)).where(items.c.done.is_(False))

    def perform(self, session: Session, item_id: int, doc: dict[str, Any]) -> None:
        pass


# Registered only while a test of this module runs: a scheduler or ``reconcile flush``
# in another module's test runs a pass for every registered ReconciledJob.
FAST_CLASSES: tuple[type[ReconciledJob], ...] = (
    NamedThing, JitteredItem, UnlockedItem, ByParity, DictKeyItem)
for _cls in FAST_CLASSES:
    registry.unregister(_cls.job_name)


@pytest.fixture(autouse=True)
def registered() -> Iterator[None]:
    for cls in FAST_CLASSES:
        registry.register(cls)
    yield
    for cls in FAST_CLASSES:
        registry.unregister(cls.job_name)


@pytest.fixture
def engine(app_engine: sa.Engine) -> sa.Engine:
    fast_metadata.create_all(app_engine)
    return app_engine


@pytest.fixture(autouse=True)
def clean_chains() -> Iterator[None]:
    saved = client_middleware.items
    client_middleware.clear()
    yield
    client_middleware.clear()
    for mw in saved:
        client_middleware.add(mw)


def seed(engine: sa.Engine, n: int, start: int = 1) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(start, start + n)])


def passthrough(job_class: Any, payload: dict[str, Any], call_next: Any) -> Any:
    return call_next(payload)


def deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    """One clock and one run-at sequence for both paths of a comparison."""
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.25)
    counter = itertools.count()
    monkeypatch.setattr(random, "uniform", lambda a, b: a + (b - a) * ((next(counter) % 7) / 7))


def fast_then_slow(broker: Broker, monkeypatch: pytest.MonkeyPatch,
                   run: Callable[[Settings], passes.PassResult], settings: Settings,
                   reference: str) -> tuple[list[bytes], list[bytes]]:
    """Everything one pass writes on the fast path, then on the reference path:
    client.enqueue's dicts, reached through a client middleware or through the
    setting ``fast_paths = false`` (``reference``: "middleware" or "setting")."""
    deterministic(monkeypatch)
    first = run(settings)
    assert first.error is None, first.error
    fast = everything(broker)
    broker.flush_namespace()
    deterministic(monkeypatch)
    if reference == "middleware":
        client_middleware.add(passthrough)
        try:
            second = run(settings)
        finally:
            client_middleware.remove(passthrough)
    else:
        off = settings.with_overrides(fast_paths=False)
        use_settings(off)
        try:
            second = run(off)
        finally:
            use_settings(settings)
    assert second.error is None, second.error
    assert (first.found, first.enqueued) == (second.found, second.enqueued)
    return fast, everything(broker)


# -- the payloads --------------------------------------------------------------------


@pytest.mark.parametrize("reference", ["middleware", "setting"])
@pytest.mark.parametrize("job", [ProcessItem, JitteredItem, UnlockedItem, SyncStock, NamedThing, DictKeyItem],
                         ids=lambda j: j.__name__)
def test_fast_pass_writes_the_bytes_client_enqueue_writes(
    pg_settings: Settings, engine: sa.Engine, broker: Broker, monkeypatch: pytest.MonkeyPatch,
    job: type[ReconciledJob], reference: str,
) -> None:
    seed(engine, 5)
    with engine.begin() as c:
        c.execute(regions.insert(), [{"sku": s, "region": r} for s in (1, 2) for r in ("eu", "us")])
        c.execute(names.insert(), [{"name": n} for n in ('a"b', "back\\slash", "é", "line\u2028sep", "日本")])
    fast, slow = fast_then_slow(broker, monkeypatch, lambda s: run_pass(job, settings=s), pg_settings,
                                reference)
    assert fast and len(fast) == len(slow)
    limit = pg_settings.max_payload_bytes
    expanded = sorted((comparable(job, decode(raw, limit)) for raw in fast), key=repr)
    reference_ = sorted((comparable(job, decode(raw, limit)) for raw in slow), key=repr)
    assert expanded == reference_
    for raw in fast:
        payload = decode(raw, limit)
        assert list(payload) == ["queue", "jid", "class", "args", "pl" if job.unique_for else "p"]
        expand_pass_payload(payload, job.unique_until)
        if job.unique_for:
            assert payload["lock"] == "@" + job.job_name + "\n" + orjson.dumps(
                payload["args"], option=orjson.OPT_SORT_KEYS).decode()
            assert payload["unique_until"] == job.unique_until


def comparable(job: type[ReconciledJob], payload: dict[str, Any]) -> dict[str, Any]:
    """What a full payload and an expanded compact one must agree on: everything but
    the jid, the lock's form, the run-at shown ("at": the scheduled set's score
    decides) and the retry option (a compact payload's is the class's)."""
    expand_pass_payload(payload, job.unique_until)
    out = {k: v for k, v in payload.items() if k not in ("jid", "lock", "at", "enqueued_at", "retry")}
    out["locked"] = bool(payload.get("lock"))
    out["args"] = orjson.loads(orjson.dumps(out["args"], option=orjson.OPT_SORT_KEYS))
    out["created_at"] = round(out["created_at"], 3)
    if "retry" in payload:
        assert payload["retry"] == job.retry
    return out


def test_the_setting_fast_paths_off_sends_every_pass_through_client_enqueue(settings: Settings) -> None:
    assert fast_pass.FastPass.create(ProcessItem, settings, 0.0, overwrite=False) is not None
    off = settings.with_overrides(fast_paths=False)
    assert fast_pass.FastPass.create(ProcessItem, off, 0.0, overwrite=False) is None


@pytest.mark.parametrize("jitter", [0.0, 30.0])
@pytest.mark.parametrize("job", [ProcessItem, UnlockedItem, SyncStock, NamedThing, DictKeyItem],
                         ids=lambda j: j.__name__)
def test_payload_bytes_are_the_compact_form_and_digests_equal_client_builds(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, job: type[ReconciledJob], jitter: float
) -> None:
    """Byte for byte ``{"queue","jid","class","args","pl"|"p"}`` with the args as
    canonical JSON (object keys sorted), the lock members are those args, and the
    digests sent for the check against perform_async's lock are the ones
    client.enqueue's records carry, from the same clock and keys."""
    by_job: dict[str, list[tuple[Any, ...]]] = {
        "ProcessItem": [(1,), (2**63 - 1,), (-5,)],
        "UnlockedItem": [(1,), (2,)],
        "SyncStock": [(1, "eu"), (2, 'q"uote')],
        "NamedThing": [("é",), ("line\u2028sep",), ("back\\slash",), ("日本",)],
        "DictKeyItem": [(1, {"z": 1, "a": "x"}), (2, {"b": [1.5, None, True], "a": {}})],
    }
    keys = by_job[job.__name__]
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.25)
    monkeypatch.setattr(os, "urandom", lambda n: bytes(i % 256 for i in range(n)))  # both paths' jids
    fast = fast_pass.FastPass.create(job, settings, jitter, overwrite=False)
    assert fast is not None
    built = fast._payloads(fast._encode(keys), range(len(keys)))
    delays = [d for part in built for d in part.delays or []] if jitter else None
    ttl, template, limit = fast.lock_ttl, fast.template, settings.max_payload_bytes
    records, _ = client._build_records(job, template, keys, job.arg_names(), ttl, 1_700_000_000.25,
                                       0.0, 0.0, 0.0, delays, limit)
    ids = os.urandom(12 * len(keys)).hex()  # patched: the jids both paths drew
    stamp = b',"pl":' if ttl else b',"p":'
    canonical = [orjson.dumps(k, option=orjson.OPT_SORT_KEYS) for k in keys]
    expected = [
        b'{"queue":' + orjson.dumps(job.queue) + b',"jid":"' + ids[24 * i : 24 * i + 24].encode()
        + b'","class":' + orjson.dumps(job.job_name) + b',"args":' + canonical[i] + stamp
        + b"1700000000.25}\n"
        for i in range(len(keys))
    ]
    assert b"".join(part.payloads for part in built) == b"".join(expected)
    members = b"".join(c + b"\n" for c in canonical) if ttl else b""
    assert b"".join(part.members for part in built) == members
    assert b"".join(part.digests for part in built) == "".join(r.lock for r in records).encode()
    for r, k in zip(records, keys, strict=True):
        assert r.lock == (job.lock_digest(job.queue, list(k)) if ttl else "")
        assert r.pass_lock == (job.job_name + "\n" + orjson.dumps(k, option=orjson.OPT_SORT_KEYS).decode()
                               if ttl else "")
    assert [r.delay for r in records] == (delays or [0.0] * len(keys))
    assert [d for part in built for d in part.delays or []] == (delays or [])


def test_jitter_spreads_run_ats_through_the_scheduled_set(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    seed(engine, 300)
    before = time.time()
    result = run_pass(JitteredItem, settings=pg_settings)
    scheduled = broker.set_entries("scheduled", 0, -1)
    assert result.enqueued == 300
    assert len(scheduled) + len(broker.queue_entries("items", 1000)) == 300
    assert len(scheduled) >= 290  # a run-at equal to now goes straight to the queue
    for raw, score in scheduled:
        payload = orjson.loads(raw)
        # the score (Redis's clock + the jitter delay) decides; the compact payload
        # carries only the pass's time
        assert "at" not in payload and before - 1 <= payload["pl"] <= time.time()
        assert before <= score <= time.time() + 30


def test_fast_pass_payloads_run_like_enqueued_ones(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    seed(engine, 3)
    assert run_pass(ProcessItem, settings=pg_settings).enqueued == 3
    executor = Executor(pg_settings, broker)
    ops = [executor.run(d) for d in broker.exchange("p", ["items"], 10)]
    assert [op.kind for op in ops] == [SettleKind.ACK] * 3
    broker.settle("p", ops)
    with engine.connect() as c:
        assert sorted(r[0] for r in c.execute(sa.select(effects.c.item_id))) == [1, 2, 3]
    # an acked job released its lock: a key pending again is enqueued by the next pass
    with engine.begin() as c:
        c.execute(items.update().where(items.c.id == 2).values(done=False))
    assert run_pass(ProcessItem, settings=pg_settings).enqueued == 1


# -- locks: dedupe, probes, counts ---------------------------------------------------


def test_perform_async_and_a_pass_dedupe_both_ways(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    seed(engine, 4)
    assert ProcessItem.perform_async(2) is not None
    result = run_pass(ProcessItem, settings=pg_settings)
    assert (result.enqueued, result.already_queued) == (3, 1)
    assert ProcessItem.perform_async(3) is None, "the pass's lock holds perform_async off"
    assert len(broker.queue_entries("items", 100)) == 4


def test_second_pass_probes_and_builds_no_payload(
    pg_settings: Settings, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(engine, 2500)
    monkeypatch.setattr(ProcessItem, "batch_size", 1000)
    first = run_pass(ProcessItem, settings=pg_settings)
    built = 0
    real = fast_pass.FastPass._payloads

    def counting(self: Any, enc: Any, which: Any) -> Any:
        nonlocal built
        built += len(which)
        return real(self, enc, which)

    monkeypatch.setattr(fast_pass.FastPass, "_payloads", counting)
    second = run_pass(ProcessItem, settings=pg_settings)
    assert (first.found, first.enqueued, first.already_queued) == (2500, 2500, 0)
    assert (second.found, second.enqueued, second.already_queued) == (2500, 0, 2500)
    assert built == 0


@pytest.mark.parametrize("probe_first", [True, False], ids=["probed", "direct"])
def test_a_page_with_some_locks_held_pushes_only_the_free_keys(
    pg_settings: Settings, engine: sa.Engine, broker: Broker, monkeypatch: pytest.MonkeyPatch,
    probe_first: bool,
) -> None:
    seed(engine, 100)
    ProcessItem.perform_bulk([[k] for k in range(1, 101, 3)])  # 34 keys already queued
    monkeypatch.setattr(fast_pass, "PROBE_BELOW", 2.0 if probe_first else -1.0)
    result = run_pass(ProcessItem, settings=pg_settings)
    assert (result.found, result.enqueued, result.already_queued) == (100, 66, 34)
    queued = [orjson.loads(r)["args"][0] for r in broker.queue_entries("items", 1000)]
    assert sorted(queued) == list(range(1, 101))


def test_a_lock_taken_between_probe_and_push_drops_the_key(
    pg_settings: Settings, engine: sa.Engine, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(engine, 10)
    real_probe = PassPusher.probe

    def probe_then_race(self: PassPusher, digests: bytes, width: int, *rest: Any) -> bytes:
        flags = real_probe(self, digests, width, *rest)
        ProcessItem.perform_async(5)  # another enqueue wins key 5 after the probe
        return flags

    monkeypatch.setattr(PassPusher, "probe", probe_then_race)
    result = run_pass(ProcessItem, settings=pg_settings)
    assert (result.enqueued, result.already_queued) == (9, 1)
    assert len(broker.queue_entries("items", 100)) == 10


def _pass_locks(broker: Broker) -> set[bytes]:
    """ProcessItem's held pass locks: members of either generation."""
    name = ProcessItem.job_name
    return set(broker.redis.smembers(broker.keys.plocks(name))) | set(
        broker.redis.smembers(broker.keys.plocks_prev(name)))


def _wait_until(what: str, done: Callable[[], bool], timeout: float = 20.0) -> float:
    """Poll ``done`` (a condition on Redis, not a fixed sleep); seconds it took."""
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.mark.parametrize("probe_first", [True, False], ids=["probed", "direct"])
def test_a_queued_backlog_older_than_the_lock_ttl_is_not_enqueued_twice(
    pg_settings: Settings, engine: sa.Engine, broker: Broker, monkeypatch: pytest.MonkeyPatch,
    probe_first: bool,
) -> None:
    """Nothing drains the queue for three times unique_for, and the lock generations
    turn every half of it: every pass in between finds the keys already queued (it
    renews their locks into the current generation), so the queue still holds each
    key once."""
    seed(engine, 40)
    unique_for = 1.2
    monkeypatch.setattr(ProcessItem, "unique_for", unique_for)
    monkeypatch.setattr(fast_pass, "PROBE_BELOW", 2.0 if probe_first else -1.0)
    gen = broker.keys.plocks_gen(ProcessItem.job_name)
    first = run_pass(ProcessItem, settings=pg_settings)
    assert (first.found, first.enqueued) == (40, 40)
    every = {orjson.dumps([k]) for k in range(1, 41)}
    started = time.monotonic()
    turns = 0
    while time.monotonic() - started < 3 * unique_for:
        _wait_until("the generation to age", lambda: not broker.redis.exists(gen))
        again = run_pass(ProcessItem, settings=pg_settings)
        turns += 1
        assert (again.enqueued, again.already_queued) == (0, 40)
        assert _pass_locks(broker) == every  # renewed before the turn, not dropped by it
    assert turns >= 5
    queued = sorted(orjson.loads(r)["args"][0] for r in broker.queue_entries("items", 1000))
    assert queued == list(range(1, 41))


def test_with_the_queue_empty_locks_lapse_and_a_lost_job_is_enqueued_again(
    pg_settings: Settings, engine: sa.Engine, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue list is lost (evicted) while the locks survive: passes do not renew
    the locks of an empty queue, so they lapse with their generation (within
    unique_for) and the next pass re-derives every key."""
    seed(engine, 30)
    unique_for = 0.8
    monkeypatch.setattr(ProcessItem, "unique_for", unique_for)
    run_pass(ProcessItem, settings=pg_settings)
    broker.redis.delete(broker.keys.queue("items"))
    lost = time.monotonic()
    held_passes = 0
    while True:
        result = run_pass(ProcessItem, settings=pg_settings)
        if result.enqueued:
            break
        assert result.already_queued == 30  # still locked: not yet lapsed
        held_passes += 1
        assert time.monotonic() - lost < unique_for + 2, "the locks never lapsed"
        time.sleep(0.05)
    healed = time.monotonic() - lost
    assert (result.enqueued, result.already_queued) == (30, 0)
    assert held_passes >= 1 and healed <= unique_for + 1
    assert len(broker.queue_entries("items", 100)) == 30


def test_an_acked_pass_job_releases_its_pass_lock_from_both_generations(
    pg_settings: Settings, engine: sa.Engine, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(engine, 3)
    monkeypatch.setattr(ProcessItem, "unique_for", 0.4)
    run_pass(ProcessItem, settings=pg_settings)  # the first pass turns: its locks are "prev"
    assert _pass_locks(broker) == {b"[1]", b"[2]", b"[3]"}
    executor = Executor(pg_settings, broker)
    ops = [executor.run(d) for d in broker.exchange("p", ["items"], 10)]
    assert [op.kind for op in ops] == [SettleKind.ACK] * 3
    assert {op.lock for op in ops} == {f"@{ProcessItem.job_name}\n[{k}]" for k in (1, 2, 3)}
    broker.settle("p", ops)
    assert _pass_locks(broker) == set()


def test_unlocked_class_enqueues_every_key_every_pass(pg_settings: Settings, engine: sa.Engine) -> None:
    seed(engine, 20)
    assert run_pass(UnlockedItem, settings=pg_settings).enqueued == 20
    assert run_pass(UnlockedItem, settings=pg_settings).enqueued == 20


def test_redis_loss_pass_takes_surviving_locks_over(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    seed(engine, 50)
    run_pass(ProcessItem, settings=pg_settings)
    broker.redis.delete(broker.keys.queue("items"))  # the jobs are gone, their locks are not
    assert run_pass(ProcessItem, settings=pg_settings).already_queued == 50
    result = run_pass(ProcessItem, trigger="redis_loss", settings=pg_settings)
    assert (result.enqueued, result.already_queued) == (50, 0)
    assert len(broker.queue_entries("items", 100)) == 50
    assert _pass_locks(broker) == {orjson.dumps([k]) for k in range(1, 51)}


# -- the normal path when it must be taken -------------------------------------------


def test_client_middleware_sees_changes_and_rejects_pass_keys(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    seed(engine, 6)

    @client_middleware.add
    def stamp(job_class: Any, payload: dict[str, Any], call_next: Any) -> Any:
        if payload["args"][0] % 2:
            return None
        payload["tenant"] = "acme"
        return call_next(payload)

    result = run_pass(ProcessItem, settings=pg_settings)
    assert (result.enqueued, result.already_queued) == (3, 3)
    jobs = [orjson.loads(r) for r in broker.queue_entries("items", 100)]
    assert sorted(j["args"][0] for j in jobs) == [2, 4, 6]
    assert all(j["tenant"] == "acme" for j in jobs)


def test_a_testing_interceptor_receives_pass_keys_instead_of_redis(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    seed(engine, 4)
    with testing.fake() as fake:
        result = run_pass(ProcessItem, settings=pg_settings)
    assert result.enqueued == 4
    assert sorted(a[0] for a in fake.args_for(ProcessItem)) == [1, 2, 3, 4]
    assert broker.queue_entries("items", 100) == []


def test_a_custom_lock_digest_goes_through_client_enqueue(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    seed(engine, 6)
    result = run_pass(ByParity, settings=pg_settings)
    assert (result.enqueued, result.already_queued) == (2, 4)


def test_the_kill_switch_stops_a_running_pass(
    pg_settings: Settings, engine: sa.Engine, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(engine, 30)
    monkeypatch.setattr(ProcessItem, "batch_size", 10)
    allowed = iter([True, False, False])
    monkeypatch.setattr(ProcessItem, "enqueue_allowed", classmethod(lambda cls: next(allowed)))
    result = run_pass(ProcessItem, settings=pg_settings)
    assert (result.found, result.enqueued, result.already_queued) == (30, 10, 20)
    assert len(broker.queue_entries("items", 100)) == 10


def test_an_oversize_payload_fails_the_pass_and_writes_nothing_of_its_page(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    with engine.begin() as c:
        c.execute(names.insert(), [{"name": "short"}, {"name": "x" * 600}])
    settings = pg_settings.with_overrides(max_payload_bytes=500)
    use_settings(settings)
    result = run_pass(NamedThing, settings=settings)
    assert result.error is not None and result.error.startswith("PayloadTooLarge: payload of")
    assert "over the max_payload_bytes limit of 500" in result.error
    assert everything(get_broker(settings)) == []


def test_out_of_memory_is_a_broker_error_and_writes_nothing(
    pg_settings: Settings, engine: sa.Engine, tmp_path: Path
) -> None:
    from tests.fault.servers import RedisServer

    server = RedisServer(tmp_path / "redis", maxmemory="2mb", policy="noeviction")
    server.start()
    try:
        settings = pg_settings.with_overrides(redis_url=server.url)
        use_settings(settings)
        r = server.client()
        filler = 0
        while True:  # fill Redis up to its limit
            try:
                r.set(f"filler:{filler}", b"x" * 10_000)
            except redis.OutOfMemoryError:
                break
            filler += 1
        seed(engine, 200)
        result = run_pass(ProcessItem, settings=settings)
        assert result.error is not None and result.error.startswith("BrokerError: Redis refused to enqueue")
        assert "out of memory" in result.error
        assert r.keys("{*") == []
        with pytest.raises(BrokerError):
            PassPusher(get_broker(settings)).push(
                job=ProcessItem.job_name, queue="items", digests=b"a" * 32, width=32,
                members=b"[1]\n", payloads=b"{}\n", count=1)
    finally:
        server.stop()


# -- the keyset reader ---------------------------------------------------------------


@pytest.mark.parametrize("job", [ProcessItem, SyncStock, NamedThing], ids=lambda j: j.__name__)
def test_keyset_reader_pages_like_pending_page(
    pg_settings: Settings, engine: sa.Engine, job: type[ReconciledJob]
) -> None:
    seed(engine, 25)
    with engine.begin() as c:
        c.execute(regions.insert(), [{"sku": s, "region": r} for s in range(5) for r in ("eu", "us", "ap")])
        c.execute(names.insert(), [{"name": f"n{i:03d}é"} for i in range(20)])
    stmt = job().pending()
    assert keyset.KeysetPages.build(engine, stmt, 7) is not None, "plain keys use the fast reader"
    read = keyset.reader(engine, stmt, 7)
    after: tuple[Any, ...] | None = None
    while True:
        fast, slow = read(after), pending_sql.page(engine, stmt, after, 7)
        assert fast == slow and all(type(r) is tuple for r in fast)
        if not fast:
            break
        after = fast[-1]


def test_keyset_reader_binds_the_pending_query_parameters(pg_settings: Settings, engine: sa.Engine) -> None:
    seed(engine, 30)
    stmt = sa.select(items.c.id).where(items.c.id.in_([3, 5, 8, 13, 21, 34]), items.c.id > sa.bindparam("lo"))
    stmt = stmt.params(lo=4)
    assert keyset.KeysetPages.build(engine, stmt, 2) is not None
    read = keyset.reader(engine, stmt, 2)
    assert read(None) == [(5,), (8,)]
    assert read((8,)) == [(13,), (21,)]
    assert read((21,)) == []


def test_keyset_reader_falls_back_where_sqlalchemy_converts_values(engine: sa.Engine) -> None:
    class Upper(sa.types.TypeDecorator[str]):
        impl = sa.Text
        cache_ok = True

        def process_result_value(self, value: Any, dialect: Any) -> Any:
            return None if value is None else value.upper()

    stmt = sa.select(sa.type_coerce(names.c.name, Upper())).where(names.c.done.is_(False))
    assert keyset.KeysetPages.build(engine, stmt, 10) is None
    with engine.begin() as c:
        c.execute(names.insert(), [{"name": "abc"}])
    assert keyset.reader(engine, stmt, 10)(None) == [("ABC",)]


def test_keyset_pass_sees_rows_that_change_under_it(
    pg_settings: Settings, engine: sa.Engine, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(engine, 2000)
    real_page = keyset.KeysetPages.page
    calls = 0

    def page_then_change(self: keyset.KeysetPages, after: Any) -> list[tuple[Any, ...]]:
        nonlocal calls
        rows = real_page(self, after)
        calls += 1
        if calls == 2:  # mid-pass: rows ahead finish, new rows appear behind and ahead
            with engine.begin() as c:
                c.execute(items.update().where(items.c.id.between(1500, 1599)).values(done=True))
                c.execute(items.insert(), [{"id": i} for i in range(5000, 5050)])
                c.execute(items.insert(), [{"id": -i} for i in range(1, 11)])
        return rows

    monkeypatch.setattr(keyset.KeysetPages, "page", page_then_change)
    monkeypatch.setattr(ProcessItem, "batch_size", 300)
    result = run_pass(ProcessItem, settings=pg_settings)
    queued = {orjson.loads(p)["args"][0] for p in broker.queue_entries("items", 10_000)}
    expected = set(range(1, 1500)) | set(range(1600, 2001)) | set(range(5000, 5050))
    assert queued == expected, "every row pending when its page was read, nothing else"
    assert result.found == result.enqueued == len(expected)
    assert calls == 7  # 1,950 keys / 300 per page (the last one short), one transaction each


def test_a_lost_database_connection_fails_the_pass_with_a_dbapi_error(
    pg_settings: Settings, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(engine, 5)
    pages = keyset.KeysetPages.build(engine, ProcessItem().pending(), 10)
    assert pages is not None
    # the server drops the connection in the middle of the page's query
    pages._first_sql, pages._first_params = "SELECT pg_terminate_backend(pg_backend_pid())", {}
    with pytest.raises(sa.exc.DBAPIError) as lost:
        pages.page(None)
    assert lost.value.connection_invalidated
    assert pages.page((0,)) == [(1,), (2,), (3,), (4,), (5,)], "the pool hands out a live connection"



def test_a_page_is_one_autocommit_select_and_the_pool_gets_its_connection_back_as_it_was(
    schema_url: str, engine: sa.Engine
) -> None:
    seed(engine, 3)
    single = sa.create_engine(schema_url, pool_size=1, max_overflow=0)
    try:
        pages = keyset.KeysetPages.build(single, ProcessItem().pending(), 10)
        assert pages is not None
        assert pages.page(None) == [(1,), (2,), (3,)]
        with single.connect() as c:  # the one pooled connection the page used
            assert c.connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]
            c.execute(sa.text("SELECT 1"))
            assert c.in_transaction()
    finally:
        single.dispose()



@pytest.mark.parametrize("jitter", [False, True])
def test_a_chunk_over_push_bytes_is_pushed_in_several_calls(
    pg_settings: Settings, engine: sa.Engine, broker: Broker, monkeypatch: pytest.MonkeyPatch, jitter: bool
) -> None:
    seed(engine, 1000)
    monkeypatch.setattr(fast_pass, "PUSH_BYTES", 4_000)  # about 45 compact payloads a call
    calls = 0
    real_push = PassPusher.push

    def counting(self: PassPusher, **kwargs: Any) -> bytes:
        nonlocal calls
        calls += 1
        return real_push(self, **kwargs)

    monkeypatch.setattr(PassPusher, "push", counting)
    job = JitteredItem if jitter else ProcessItem
    job.perform_bulk([[k] for k in range(1, 1001, 10)])
    first = run_pass(job, settings=pg_settings)
    assert (first.found, first.enqueued, first.already_queued) == (1000, 900, 100)
    assert calls >= 20
    raws = broker.queue_entries("items", 2000) + [m for m, _ in broker.set_entries("scheduled", 0, -1)]
    assert sorted(orjson.loads(r)["args"][0] for r in raws) == list(range(1, 1001))


def test_deleting_a_jittered_pass_job_releases_its_pass_lock(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    seed(engine, 20)
    first = run_pass(JitteredItem, settings=pg_settings)
    scheduled = len(broker.set_entries("scheduled", 0, -1))
    assert first.enqueued == 20 and scheduled >= 15
    change = sets.delete("scheduled", settings=pg_settings)
    assert change.changed == scheduled
    again = run_pass(JitteredItem, settings=pg_settings)
    assert (again.enqueued, again.already_queued) == (scheduled, 20 - scheduled)


def test_a_failing_pass_job_holds_its_key_through_the_backoff(
    pg_settings: Settings, engine: sa.Engine, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry outlives a lock generation: the key holds perform_async's lock until the
    retry time + 600 s instead (fetch.lua), so passes report it already queued and do
    not bypass the backoff; its pass lock is released."""
    seed(engine, 1)
    assert run_pass(ProcessItem, settings=pg_settings).enqueued == 1

    def fails(self: Any, session: Session, item_id: int) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(ProcessItem, "perform", fails)
    executor = Executor(pg_settings, broker)
    ops = [executor.run(d) for d in broker.exchange("p", ["items"], 10)]
    assert [op.kind for op in ops] == [SettleKind.RETRY]
    broker.settle("p", ops)
    assert _pass_locks(broker) == set()
    ttl = broker.redis.pttl(broker.keys.unique(ProcessItem.lock_digest("items", [1])))
    assert ttl > 600_000
    again = run_pass(ProcessItem, settings=pg_settings)
    assert (again.enqueued, again.already_queued) == (0, 1)
