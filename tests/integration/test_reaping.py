"""Reaping in constant work per interval (reap.lua, heartbeat.lua, Maintenance.reap_turn).

* A heartbeat scores its process in ``{ns}:beats`` at the Redis server's ``TIME``
  plus the lease; a reap reads only the lapsed head of that set, so live processes
  cost it nothing, and it examines at most ``REAP_BATCH`` per call (``more`` says the
  rest wait).
* One process per interval reaps: the turn is ``SET {ns}:reaper <id> NX PX``; a
  refused process learns when the turn lapses.
* A lapsed score whose alive key is still there (a beat refused under maxmemory) is
  not reaped but moved to the alive key's expiry.
* After a flush the next beat re-registers; records written by the previous version
  (in ``{ns}:procs`` only) are adopted and reaped; the previous ``reap.lua`` run beside
  the new one recovers each job once.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from reconcile.broker import Broker
from reconcile.broker.maintenance import REAP_BATCH
from reconcile.broker.scripts import with_prelude
from reconcile.config import Settings
from reconcile.worker.maintenance import Maintenance
from tests.jobs_core import Record

BEFORE = Path(__file__).resolve().parents[2] / "benchmarks" / "reap_before.lua"


def server_ms(broker: Broker) -> int:
    sec, usec = broker.redis.time()  # type: ignore[misc]
    return int(sec) * 1000 + int(usec) // 1000


def crash(broker: Broker, proc: str) -> None:
    """``proc`` was SIGKILLed a lease ago: its alive key expired and its beat lapsed."""
    broker.redis.delete(broker.keys.alive(proc))
    broker.redis.zadd(broker.keys.beats, {proc: 0})


def lease_jobs(broker: Broker, proc: str, n: int) -> None:
    Record.perform_bulk([[f"{proc}-{i}"] for i in range(n)])
    assert len(broker.exchange(proc, ["default"], n)) == n


def test_a_heartbeat_scores_its_process_at_the_server_clock_plus_the_lease(
    settings: Settings, broker: Broker
) -> None:
    before = server_ms(broker)
    broker.heartbeat("p1", {"queues": "default"})
    after = server_ms(broker)
    lease_ms = int(settings.lease_seconds * 1000)
    score = broker.redis.zscore(broker.keys.beats, "p1")
    assert score is not None and before + lease_ms <= score <= after + lease_ms
    assert broker.redis.sismember(broker.keys.procs, "p1"), "old reapers and status read procs"
    assert 0 < broker.redis.pttl(broker.keys.alive("p1")) <= lease_ms
    assert broker.redis.hget(broker.keys.proc("p1"), "queues") == b"default"


def test_a_reap_recovers_the_lapsed_processes_and_leaves_the_live_ones_alone(
    settings: Settings, broker: Broker
) -> None:
    for i in range(200):
        broker.heartbeat(f"live-{i}", {"queues": "default"})
    for proc in ("dead-a", "dead-b", "dead-c"):
        broker.heartbeat(proc, {"queues": "default"})
        lease_jobs(broker, proc, 2)
        crash(broker, proc)
    result = broker.reap()
    assert (result.requeued, result.reaped_processes, result.more) == (6, 3, False)
    assert broker.redis.llen(broker.keys.queue("default")) == 6
    assert broker.redis.zcard(broker.keys.beats) == 200
    assert broker.redis.scard(broker.keys.procs) == 200
    assert not any(broker.redis.exists(broker.keys.lease(p)) for p in ("dead-a", "dead-b", "dead-c"))
    again = broker.reap()
    assert (again.requeued, again.reaped_processes) == (0, 0), "idempotent"


def test_a_heartbeat_that_lapsed_while_its_alive_key_lives_is_not_reaped(
    settings: Settings, broker: Broker
) -> None:
    """Under maxmemory the beat script is refused and only the alive key is PEXPIREd:
    the reaper must trust the alive key, and look at the process again when it lapses."""
    broker.heartbeat("busy", {"queues": "default"})
    lease_jobs(broker, "busy", 2)
    broker.redis.zadd(broker.keys.beats, {"busy": 0})  # the last beats were refused
    now = server_ms(broker)
    result = broker.reap()
    assert (result.requeued, result.reaped_processes) == (0, 0)
    assert broker.redis.hlen(broker.keys.lease("busy")) == 2
    pttl = int(broker.redis.pttl(broker.keys.alive("busy")))
    score = broker.redis.zscore(broker.keys.beats, "busy")
    assert score is not None and now < score <= server_ms(broker) + pttl + 5


def test_one_call_examines_a_batch_and_says_more_wait(settings: Settings, broker: Broker) -> None:
    for i in range(REAP_BATCH + 50):
        broker.heartbeat(f"gone-{i}", {"queues": "default"})
        crash(broker, f"gone-{i}")
    first = broker.reap()
    assert (first.reaped_processes, first.more) == (REAP_BATCH, True)
    m = Maintenance(settings, broker, "me")
    m.reap_once()
    assert broker.redis.zcard(broker.keys.beats) == 0
    assert broker.redis.scard(broker.keys.procs) == 0


def test_one_process_per_interval_takes_the_reapers_turn(settings: Settings, broker: Broker) -> None:
    s = settings.with_overrides(lease_seconds=2.0)  # a turn of 0.5 s
    a, b = Maintenance(s, broker, "proc-a"), Maintenance(s, broker, "proc-b")
    broker.heartbeat("dead", {"queues": "default"})
    lease_jobs(broker, "dead", 1)
    crash(broker, "dead")
    assert a.reap_turn() == pytest.approx(0.5)
    assert (a.reaps, a.recovered) == (1, 1)
    assert broker.redis.get(broker.keys.reaper) == b"proc-a"
    wait = b.reap_turn()
    assert 0 < wait <= 0.5, "refused: b learns when the turn lapses"
    assert b.reaps == 0
    broker.redis.delete(broker.keys.reaper)  # the interval is over: the turn lapsed
    assert b.reap_turn() == pytest.approx(0.5)
    assert b.reaps == 1
    assert broker.redis.get(broker.keys.reaper) == b"proc-b"


def test_after_a_flush_the_next_beat_re_registers(settings: Settings, broker: Broker) -> None:
    broker.heartbeat("p", {"queues": "default"})
    for key in broker.redis.scan_iter(match=broker.keys.pattern):
        broker.redis.delete(key)
    assert broker.reap().reaped_processes == 0
    broker.heartbeat("p", {"queues": "default"})
    assert broker.redis.zscore(broker.keys.beats, "p") is not None
    assert broker.redis.exists(broker.keys.alive("p")) == 1


def test_records_of_the_previous_version_are_adopted_and_reaped(
    settings: Settings, broker: Broker
) -> None:
    """An old process wrote {ns}:procs, its info and its alive key, never {ns}:beats."""
    r, k = broker.redis, broker.keys
    for proc in ("old-live", "old-dead"):
        r.sadd(k.procs, proc)
        r.hset(k.proc(proc), mapping={"queues": "default"})
        lease_jobs(broker, proc, 2)
    r.set(k.alive("old-live"), b"1", px=int(settings.lease_seconds * 1000))
    result = broker.reap()
    assert (result.requeued, result.reaped_processes) == (2, 1)
    assert r.hlen(k.lease("old-live")) == 2
    assert r.zscore(k.beats, "old-live") is not None, "adopted: looked at again when it lapses"
    assert not r.sismember(k.procs, "old-dead")


def test_the_previous_reaper_beside_the_new_one_recovers_each_job_once(
    settings: Settings, broker: Broker
) -> None:
    """During an upgrade both scripts run: each is atomic and the first empties the lease."""
    old = broker.redis.register_script(with_prelude(BEFORE.read_text()))
    broker.heartbeat("new-dead", {"queues": "default"})
    lease_jobs(broker, "new-dead", 3)
    crash(broker, "new-dead")
    out = old(keys=[broker.keys.script_key], args=["1.0", settings.max_recoveries, 3600, 64])
    assert (int(out[0]), int(out[1])) == (3, 1), "old reapers still reap new processes"
    new = broker.reap()
    assert new.requeued == 0
    assert broker.redis.zcard(broker.keys.beats) == 0
    back = [orjson.loads(raw) for raw in broker.queue_entries("default")]
    assert sorted(p["args"][0] for p in back) == ["new-dead-0", "new-dead-1", "new-dead-2"]


def test_a_turn_without_expiry_is_given_one_so_reaping_cannot_stop_for_good(
    settings: Settings, broker: Broker
) -> None:
    broker.redis.set(broker.keys.reaper, b"by-hand")  # no PX: would hold the turn forever
    assert broker.take_reaper_turn("me", 500) == 500
    assert 0 < broker.redis.pttl(broker.keys.reaper) <= 500
    with pytest.raises(ValueError, match="at least 1 ms"):
        broker.take_reaper_turn("me", 0)


def test_under_maxmemory_a_refused_beat_keeps_the_process_alive_and_no_reap_takes_it(
    tmp_path: Path,
) -> None:
    """A private Redis at its ``maxmemory`` (noeviction): the beat script is refused
    before it writes anything, the alive key is kept by ``PEXPIRE``, and a reap that
    finds the lapsed score checks the alive key and does not reap the live process
    (it fails on its first write instead, reaping nothing, as the previous one did)."""
    import redis

    from reconcile.config import load_settings
    from tests.fault.servers import RedisServer

    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        s = load_settings({"redis_url": server.url, "namespace": "oom", "lease_seconds": 0.5},
                          env={}, pyproject=False)
        b = Broker(s)
        b.heartbeat("live", {"queues": "default"})
        b.redis.hset(b.keys.lease("live"), mapping={
            f"{i}|default": f'{{"queue":"default","jid":"{i:024x}"}}' for i in (1, 2)})
        b.redis.mset({f"{{oom}}:filler:{j}": b"x" * 100 for j in range(5_000)})
        # the limit well below what is used: every write that may grow memory is refused
        # (at the exact limit, refusals flicker with the size of each command's buffer)
        used = int(b.redis.info("memory")["used_memory"])
        b.redis.config_set("maxmemory", used // 2)
        with pytest.raises(redis.OutOfMemoryError):
            b.redis.set("{oom}:one-more", b"x")
        lapsed = b.redis.zscore(b.keys.beats, "live")
        assert lapsed is not None
        b.heartbeat("live", {"queues": "default"})  # refused, then PEXPIRE: no error
        assert b.redis.zscore(b.keys.beats, "live") == lapsed, "the beat script wrote under OOM"
        while server_ms(b) <= lapsed:  # the score lapses; the alive key lives on
            b.heartbeat("live", {"queues": "default"})
        b.heartbeat("live", {"queues": "default"})
        assert b.redis.pttl(b.keys.alive("live")) > 0
        with pytest.raises(redis.OutOfMemoryError):
            b.reap()
        assert b.redis.hlen(b.keys.lease("live")) == 2, "a live process was reaped"
        b.redis.config_set("maxmemory", 0)  # memory back (the test's own server)
        b.heartbeat("live", {"queues": "default"})
        assert b.reap().reaped_processes == 0
    finally:
        server.stop()


def test_a_fleet_of_maintenance_loops_reaps_about_once_per_interval(
    settings: Settings, broker: Broker
) -> None:
    """Eight processes' loops for 2 s with a 0.2 s turn: about 10 reaps in all (one
    per interval), not 8 x 10; and no interval is missed by much, so the recovery
    bound (lease + at most 5/16 lease between reaps) holds."""
    import threading
    import time

    s = settings.with_overrides(lease_seconds=0.8, poll_interval=60.0)
    loops = [Maintenance(s, broker, f"proc-{i}") for i in range(8)]
    stop = threading.Event()
    threads = [threading.Thread(target=m.run, args=(stop,), daemon=True) for m in loops]
    started = time.monotonic()
    for t in threads:
        t.start()
    stop.wait(2.0)
    stop.set()
    for t in threads:
        t.join(5)
    elapsed = time.monotonic() - started
    reaps = sum(m.reaps for m in loops)
    turn = s.lease_seconds / 4
    assert elapsed / (turn * 1.25) - 2 <= reaps <= elapsed / turn + 2, reaps
