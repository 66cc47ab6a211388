"""Redis Sentinel: the ``redis+sentinel://`` URL, following a failover, READONLY, WAIT.

Parsing, masking and the settings' checks need no server. The rest runs against a
private group (:class:`tests.fault.sentinel.SentinelGroup`: 1 primary, 1 replica, 3
Sentinels, all private ``redis-server`` processes) started per test, since failovers
change it; ``enqueue_replicas`` against a server without replicas uses the shared Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from reconcile import Job, config
from reconcile.broker import Broker, PushRecord, SettleOp
from reconcile.cli import main
from reconcile.config import Settings, load_settings, mask_url, scrub, use_settings
from reconcile.embedded import redis_answers
from reconcile.errors import ConfigError, NotReplicated
from reconcile.scheduler.redis_watch import RedisWatch
from reconcile.sentinel_url import SentinelTarget, parse_sentinel_url
from tests.fault.sentinel import SERVICE, SentinelGroup
from tests.fault.servers import RedisServer
from tests.jobs_core import Record, counts, record, running_worker, wait_for


def _settings(url: str, **values: object) -> Settings:
    return load_settings({"redis_url": url, **values}, env={}, pyproject=False)


# -- the URL -------------------------------------------------------------------------------


def test_a_sentinel_url_names_hosts_service_db_and_both_credentials() -> None:
    t = parse_sentinel_url("redis+sentinel://app:s%40cret@s1:26380,s2,[::1]:26381/orders/3"
                           "?sentinel_password=sp&sentinel_username=watch&ssl=true")
    assert t == SentinelTarget(
        sentinels=(("s1", 26380), ("s2", 26379), ("::1", 26381)), service="orders", db=3,
        username="app", password="s@cret", sentinel_username="watch", sentinel_password="sp",
        ssl=True, sentinel_ssl=True)  # sentinel_ssl follows ssl unless given
    plain = parse_sentinel_url("redis+sentinel://h/mymaster")
    assert (plain.db, plain.password, plain.ssl, plain.sentinel_ssl) == (0, None, False, False)
    assert parse_sentinel_url("redis+sentinel://h/m/?ssl=1&sentinel_ssl=no").sentinel_ssl is False
    assert "s@cret" not in repr(t) and "sp" not in repr(t).replace("ssl", "")


@pytest.mark.parametrize(("url", "why"), [
    ("redis+sentinel:///mymaster/0", "at least one Sentinel"),
    ("redis+sentinel://h:26379", "name the Sentinel service"),
    ("redis+sentinel://h:26379/0", "service before the database number"),
    ("redis+sentinel://h:port/m/0", "not host or host:port"),
    ("redis+sentinel://h:70000/m/0", "outside 1..65535"),
    ("redis+sentinel://h/m/x", "database number"),
    ("redis+sentinel://h/m/0/extra", "not a longer path"),
    ("redis+sentinel://h/m/0?sentinel_pasword=x", "unknown query parameter 'sentinel_pasword'"),
    ("redis+sentinel://h/m/0?ssl=maybe", "ssl='maybe'"),
])
def test_a_bad_sentinel_url_is_refused_naming_the_part(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match="redis_url") as info:
        _settings(url)
    assert why in str(info.value)


def test_passwords_of_a_sentinel_url_are_masked_everywhere() -> None:
    url = "redis+sentinel://app:pw1@s1:26379,s2:26379/m/0?sentinel_password=pw2&ssl=false"
    assert mask_url(url) == "redis+sentinel://app:***@s1:26379,s2:26379/m/0?sentinel_password=***&ssl=false"
    s = _settings(url)
    assert "pw1" not in repr(s) and "pw2" not in repr(s)
    assert scrub("driver said pw1 and pw2", s) == "driver said *** and ***"
    with pytest.raises(ConfigError) as info:
        _settings(url.replace("ssl=false", "ssl=perhaps"))
    assert "pw1" not in str(info.value) and "pw2" not in str(info.value)


def test_the_client_is_built_from_every_part_of_the_url() -> None:
    """No server needed: the client connects lazily. (TLS is not exercised against a TLS
    server here: only which connection classes and credentials are configured.)"""
    import redis.sentinel

    from reconcile.broker._redis_private import SentinelTLSConnection
    from reconcile.broker.connect import SENTINEL_TIMEOUT, make_client

    client = make_client("redis+sentinel://app:pw@s1:26380,s2/orders/3?sentinel_password=sp"
                         "&sentinel_username=watch&ssl=true&sentinel_ssl=false", socket_timeout=7.0)
    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool) and pool.service_name == "orders"
    assert pool.connection_class is SentinelTLSConnection
    kw = pool.connection_kwargs
    assert (kw["db"], kw["username"], kw["password"], kw["socket_timeout"]) == (3, "app", "pw", 7.0)
    sentinels = pool.sentinel_manager.sentinels
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in sentinels] == [("s1", 26380), ("s2", 26379)]
    skw = sentinels[0].connection_pool.connection_kwargs
    assert (skw["username"], skw["password"], skw["socket_timeout"]) == ("watch", "sp", SENTINEL_TIMEOUT)
    assert sentinels[0].connection_pool.connection_class is redis.Connection  # sentinel_ssl=false
    plain = make_client("redis+sentinel://s1/orders").connection_pool
    assert plain.connection_class is redis.sentinel.SentinelManagedConnection
    assert plain.connection_kwargs["socket_timeout"] is None  # redis_socket_timeout 0: no limit


def test_the_cli_refuses_a_bad_sentinel_url_with_exit_2_and_no_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["status"], env={
        "RECONCILE_REDIS_URL": "redis+sentinel://u:topsecret@s1:26379/0"})
    assert result.exit_code == 2
    assert "Sentinel service" in result.output and "RECONCILE_REDIS_URL" in result.output
    assert "topsecret" not in result.output and "Traceback" not in result.output


# -- socket timeout against the blocking waits -------------------------------------------------


def test_a_socket_timeout_shorter_than_the_idle_wait_is_refused_at_start() -> None:
    with pytest.raises(ConfigError) as info:
        _settings("redis://h:6379/0", redis_socket_timeout=2.5, idle_wait=2.0)
    text = str(info.value)
    assert "redis_socket_timeout" in text and "idle_wait" in text and "3 s" in text
    assert _settings("redis://h:6379/0", redis_socket_timeout=3.0, idle_wait=2.0).redis_socket_timeout == 3.0
    assert _settings("redis://h:6379/0", redis_socket_timeout=0.0).redis_socket_timeout == 0.0
    # lowering idle_wait is the other way out
    assert _settings("redis://h:6379/0", redis_socket_timeout=2.0, idle_wait=0.5).idle_wait == 0.5


def test_an_idle_claim_waits_its_full_time_under_the_socket_timeout(settings: Settings) -> None:
    """A socket timeout 1 s over the idle wait: the blocked BLMOVE returns None, no error."""
    s = settings.with_overrides(redis_socket_timeout=2.0, idle_wait=1.0)
    broker = Broker(s)
    try:
        for _ in range(2):
            assert broker.claim("p1", "default", s.idle_wait) is None
            assert broker.wait_for_work(["default"], s.idle_wait) is False
    finally:
        broker.redis.close()


# -- a live group ----------------------------------------------------------------------------


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    g = SentinelGroup(tmp_path / "sentinel")
    try:
        g.start()
        yield g
    finally:
        g.stop()


@pytest.fixture
def sentinel_settings(group: SentinelGroup, namespace: str) -> Iterator[Settings]:
    s = load_settings({"redis_url": group.url(), "namespace": namespace, "idle_wait": 0.5,
                       "lease_seconds": 3.0}, env={}, pyproject=False)
    previous = config._current
    use_settings(s)
    yield s
    config._current = previous


def _queued(node_port: int, broker: Broker, queue: str = "default") -> int:
    c = redis.Redis(port=node_port)
    try:
        return int(c.llen(broker.keys.queue(queue)))
    finally:
        c.close()


def test_every_part_reaches_the_primary_through_sentinel(
        group: SentinelGroup, sentinel_settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert redis_answers(sentinel_settings)
    assert not redis_answers(sentinel_settings.with_overrides(
        redis_url=group.url().replace(SERVICE, "nosuchservice")))
    broker = Broker(sentinel_settings)
    assert broker.via_sentinel
    broker.push([PushRecord("default", 0, "", 0, b"{}")])
    assert _queued(group.primary().port, broker) == 1
    # the CLI, with the URL from the environment
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["status"], env={"RECONCILE_REDIS_URL": group.url(),
                                                      "RECONCILE_NAMESPACE": sentinel_settings.namespace})
    assert result.exit_code == 0, result.output
    assert "default" in result.output
    # the dashboard
    from reconcile.web import Dashboard
    from tests.web_client import call

    code, _, page = call(Dashboard(sentinel_settings), "/")
    assert code == 200 and "default" in page


def test_after_a_failover_a_broker_follows_the_new_primary_before_the_old_is_demoted(
        group: SentinelGroup, sentinel_settings: Settings) -> None:
    broker = Broker(sentinel_settings)
    assert broker.follow_primary() is None  # the first look records where it is
    old = group.primary()
    broker.push([PushRecord("default", 0, "", 0, b"{}")])
    group.failover()
    new = group.wait_promoted(old.port)
    assert old.client().info("replication")["role"] == "master"  # still taking writes
    assert broker.follow_primary() == ("127.0.0.1", new.port)
    broker.push([PushRecord("default", 0, "", 0, b"{}")])
    assert _queued(new.port, broker) == 2  # the replicated one and the new one
    assert _queued(old.port, broker) == 1  # nothing written to the demoted primary


def test_a_readonly_reply_is_retried_on_the_primary_not_raised(
        group: SentinelGroup, sentinel_settings: Settings) -> None:
    """A connection that talks to a replica (as one does to a primary demoted under it)
    gets READONLY for a write: the broker drops it, retries through the Sentinels and
    the enqueue succeeds on the primary, with no error for the caller."""
    broker = Broker(sentinel_settings)
    replica, primary = group.replica(), group.primary()
    with pytest.raises(redis.exceptions.ReadOnlyError):  # what a plain client sees there
        replica.client().set(broker.keys.tag + ":x", b"1")
    # a demoted primary has the scripts loaded (else NOSCRIPT would come before READONLY)
    from reconcile.broker.scripts import script_source

    assert replica.client().script_load(script_source("enqueue.lua")) == broker._enqueue.sha
    conn = broker._free.checkout()
    conn.disconnect()
    conn.connect_to(("127.0.0.1", replica.port))
    broker._free.checkin(conn, True)
    broker.push([PushRecord("default", 0, "", 0, b"a")])  # EVALSHA on the replica first
    assert _queued(primary.port, broker) == 1
    broker.push([PushRecord("default", 0, "", 0, b"b")])  # the dropped connection, reconnected
    assert _queued(primary.port, broker) == 2
    assert conn.port == primary.port


def test_after_a_demotion_enqueue_fetch_and_settle_go_to_the_new_primary(
        group: SentinelGroup, sentinel_settings: Settings) -> None:
    """A broker that never asked the Sentinels again, talking to a primary that was
    demoted: its next enqueue, fetch and settle go to the new primary, no error."""
    broker = Broker(sentinel_settings)
    proc = "test:proc:1"
    broker.push([PushRecord("default", 0, "", 0, b"a"), PushRecord("default", 0, "", 0, b"b")])
    (d,) = broker.exchange(proc, ["default"], 1)
    old = group.primary()
    group.failover()
    new = group.wait_promoted(old.port)
    group.wait_demoted(old)
    with pytest.raises(redis.exceptions.ReadOnlyError):  # what a plain client sees there
        old.client().set(broker.keys.tag + ":x", b"1")
    broker.push([PushRecord("default", 0, "", 0, b"c")])  # through the fast path
    assert _queued(new.port, broker) == 2
    got = broker.exchange(proc, ["default"], 2, [SettleOp.ack(d.field)])
    assert sorted(x.raw for x in got) == [b"b", b"c"]
    assert broker.redis.set(broker.keys.tag + ":y", b"1")  # redis-py's public path too


def test_a_worker_keeps_running_jobs_across_a_failover(group: SentinelGroup,
                                                       sentinel_settings: Settings) -> None:
    broker = Broker(sentinel_settings)
    with running_worker(sentinel_settings, concurrency=2) as worker:
        Record.perform_async("before")
        wait_for(lambda: counts(broker).get("before"), 10, what="a job before the failover")
        old = group.primary()
        group.failover()
        group.wait_promoted(old.port)
        group.wait_demoted(old)
        for i in range(20):
            Record.perform_async(f"after{i}")
        wait_for(lambda: len([k for k in counts(broker) if k.startswith("after")]) == 20, 20,
                 what="every job enqueued after the failover run")
        assert worker.broker.follow_primary() is None  # the heartbeat already followed it
    assert broker.redis.zcard(broker.keys.dead) == 0
    assert broker.redis.zcard(broker.keys.retry) == 0  # no job failed because of READONLY


def test_the_redis_watch_reports_a_failover_as_a_loss(
        group: SentinelGroup, sentinel_settings: Settings) -> None:
    broker = Broker(sentinel_settings)
    watch = RedisWatch(broker)
    assert watch.lost()  # a new namespace: the epoch is created
    assert watch.check() is None
    old = group.primary()
    group.failover()
    group.wait_promoted(old.port)
    reason = wait_for(watch.check, 10, what="the watch to see the failover")
    assert reason.startswith("Redis failover: a replica is the primary now"), reason
    watch.rearm()
    assert watch.check() is None


def test_a_killed_primary_is_replaced_and_the_watch_sees_it(group: SentinelGroup,
                                                            sentinel_settings: Settings) -> None:
    broker = Broker(sentinel_settings)
    watch = RedisWatch(broker)
    watch.lost()
    old = group.kill_primary()
    new = group.wait_promoted(old.port)
    reason = wait_for(lambda: _quiet(watch.check), 20, what="the watch to see the new primary")
    assert "failover" in reason
    broker.push([PushRecord("default", 0, "", 0, b"{}")])
    assert _queued(new.port, broker) == 1


def _quiet(check: object) -> str | None:
    try:
        return check()  # type: ignore[operator, no-any-return]
    except redis.ConnectionError:
        return None  # the primary is down and no replica promoted yet


class _StartUnique(Job):
    name = "test.sentinel.StartUnique"
    unique_for = 60
    unique_until = "start"

    def perform(self, token: str) -> None:
        record(token)


def test_redis_lost_at_the_lock_release_pushes_the_job_back_without_a_retry(
        tmp_path: Path, namespace: str) -> None:
    """``unique_until = "start"`` releases the lock as perform begins: Redis failing
    then (down, or a failover outlasting the client's retries) is not the job's
    failure. The delivery goes back to its queue; nothing ran, no retry is spent."""
    from reconcile.broker import SettleKind
    from reconcile.worker.executor import Executor

    server = RedisServer(tmp_path / "redis")
    server.start()
    previous = config._current
    try:
        s = load_settings({"redis_url": server.url, "namespace": namespace}, env={}, pyproject=False)
        use_settings(s)
        broker = Broker(s)
        _StartUnique.perform_async("t1")
        (d,) = broker.exchange("test:proc:1", ["default"], 1)
        server.kill()
        op = Executor(s, broker).run(d)
        assert op == SettleOp.push_back(d.field, "default", d.raw)
        assert op.kind is SettleKind.PUSH_BACK
    finally:
        server.stop()
        config._current = previous


# -- WAIT ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_enqueue_replicas_waits_for_the_replica_in_the_same_round_trip(
        group: SentinelGroup, sentinel_settings: Settings, fast: bool) -> None:
    waiting = sentinel_settings.with_overrides(enqueue_replicas=1, bulk_batch_size=2)
    broker = Broker(waiting, fast=fast)
    primary = group.primary().client()
    # the first call loads the script (NOSCRIPT, then the pipeline: two WAITs, once)
    assert broker.push([PushRecord("default", 0, "", 0, b"{}")]) == [True]
    before = int(primary.info("commandstats")["cmdstat_wait"]["calls"])
    assert broker.push([PushRecord("default", 0, "", 0, b"{}")]) == [True]
    use_settings(waiting)
    Record.perform_bulk([[f"t{i}"] for i in range(6)])  # 3 batches of 2: one WAIT each
    after = int(primary.info("commandstats")["cmdstat_wait"]["calls"])
    assert after - before == 1 + 3
    # returned only once the replica had them: it holds every job now
    assert _queued(group.replica().port, broker) == 8


def test_too_few_replicas_raise_not_replicated_naming_how_many_acked(
        group: SentinelGroup, sentinel_settings: Settings) -> None:
    broker = Broker(sentinel_settings.with_overrides(enqueue_replicas=2, enqueue_replicas_timeout=0.2))
    with pytest.raises(NotReplicated) as info:
        broker.push([PushRecord("default", 0, "", 0, b"{}")] * 3)
    assert (info.value.acked, info.value.wanted, info.value.jobs) == (1, 2, 3)
    assert "1 of 2 replicas" in str(info.value) and "0.2 s" in str(info.value)
    assert _queued(group.primary().port, broker) == 3  # on the primary all the same


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_without_a_replica_the_wait_times_out(settings: Settings, fast: bool) -> None:
    broker = Broker(settings.with_overrides(enqueue_replicas=1, enqueue_replicas_timeout=0.05), fast=fast)
    with pytest.raises(NotReplicated, match="0 of 1 replicas"):
        broker.push([PushRecord("default", 0, "", 0, b"{}")])
    # a ReconciledJob's enqueue does not wait (its pass re-derives what a failover loses)
    assert broker.push([PushRecord("default", 0, "", 0, b"{}")], replicated=False) == [True]
    # through the client: the first batch of 2 raises (and is on the primary)
    use_settings(settings.with_overrides(enqueue_replicas=1, enqueue_replicas_timeout=0.05,
                                         bulk_batch_size=2))
    with pytest.raises(NotReplicated, match="of 2 job"):
        Record.perform_bulk([[f"t{i}"] for i in range(6)])


def test_with_every_sentinel_down_the_primary_last_known_is_still_used(
        group: SentinelGroup, sentinel_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """The Sentinels are only asked where the primary is: when none answers, open
    connections go on working, the watch reports no loss, and the look-ups of the
    enqueue and fetch paths, the heartbeat and the watch (``follow_now_and_then``)
    neither raise nor wait: stopped Sentinels fail at once, and one failed look-up is
    logged once and not repeated for FOLLOW_RETRY seconds."""
    import time

    from reconcile.broker.base import FOLLOW_RETRY

    broker = Broker(sentinel_settings)
    watch = RedisWatch(broker)
    watch.lost()
    broker.push([PushRecord("default", 0, "", 0, b"{}")])
    for s in group.sentinels:
        s.stop()
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError, match="no Sentinel named a primary for service"):
        broker.follow_primary()
    assert time.monotonic() - started < 1.0  # not redis-py's default retries (12 s)
    broker._follow_next = 0.0  # due now
    with caplog.at_level(logging.WARNING, logger="reconcile.broker"):
        assert broker.follow_now_and_then() is None
        assert broker._follow_next >= time.monotonic() + FOLLOW_RETRY - 1
        broker.push([PushRecord("default", 0, "", 0, b"{}")])
        assert watch.check() is None
        broker._follow_next = 0.0
        assert broker.follow_now_and_then() is None  # failed again: not logged again
    assert [r.getMessage()[:20] for r in caplog.records] == ["no Sentinel answered"]
    assert _queued(group.primary_port_of_nodes(), broker) == 2
