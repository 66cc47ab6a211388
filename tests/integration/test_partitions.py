"""Partitioned passes: ``partitions = N`` splits a class's pending keys by key range into
N schedule rows that any scheduler claims; every key is in exactly one range, and with
one scheduler the keys enqueued are the same as with one partition."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from reconcile import ReconciledJob
from reconcile.broker import Broker, get_broker
from reconcile.config import Settings
from reconcile.errors import ConfigError
from reconcile.scheduler.partitioning import key_range, range_of
from reconcile.scheduler.passes import run_pass
from reconcile.scheduler.schedule_rows import partition_names, partition_of
from reconcile.scheduler.service import Scheduler
from reconcile.store import keyset, partitions, pending, runs, schedules
from tests.reconciled_app import ProcessItem, SyncStock, items, regions

part_metadata = sa.MetaData()
tokens = sa.Table(
    "part_tokens", part_metadata,
    sa.Column("token", sa.Uuid, primary_key=True),
    sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
)


class Items4(ReconciledJob):
    """ProcessItem's keys, in 4 partitions, on a queue of its own."""

    name = "test.partitions.Items4"
    every = 3600
    queue = "items4"
    partitions = 4

    def pending(self) -> Select[Any]:
        return sa.select(items.c.id).where(items.c.done.is_(False))

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        session.execute(items.update().where(items.c.id == item_id).values(done=True))


class Stock3(ReconciledJob):
    """A composite key (sku, region) in 3 partitions."""

    name = "test.partitions.Stock3"
    every = 3600
    queue = "stock3"
    partitions = 3

    def pending(self) -> Select[Any]:
        return SyncStock().pending()

    def perform(self, session: Session, sku: int, region: str) -> None:  # type: ignore[override]
        raise AssertionError("not run in these tests")


class Tokens5(ReconciledJob):
    """A UUID key (converted to its canonical text form) in 5 partitions."""

    name = "test.partitions.Tokens5"
    every = 3600
    queue = "tokens5"
    partitions = 5

    def pending(self) -> Select[Any]:
        return sa.select(tokens.c.token).where(tokens.c.done.is_(False))

    def perform(self, session: Session, token: uuid.UUID) -> None:  # type: ignore[override]
        raise AssertionError("not run in these tests")


@pytest.fixture
def engine(app_engine: sa.Engine) -> Iterator[sa.Engine]:
    part_metadata.create_all(app_engine)
    yield app_engine


def seed(engine: sa.Engine, ids: Any) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in ids])


def queued_keys(broker: Broker, queue: str) -> list[Any]:
    return sorted(orjson.loads(p)["args"][0] for p in broker.queue_entries(queue, 1_000_000))


def established(settings: Settings) -> None:
    # an established namespace: a new one counts as a Redis loss, whose pass trigger
    # (redis_loss) is not what these tests are about
    get_broker(settings).set_epoch("established")


# -- the option and the row names ------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, 2.0, "4", True, None])
def test_partitions_must_be_an_int_of_at_least_one_naming_the_class(value: Any) -> None:
    with pytest.raises(ConfigError) as err:
        type("BadPartitions", (ReconciledJob,), {
            "__module__": __name__, "every": 60, "partitions": value,
            "pending": lambda self: sa.select(items.c.id),
            "perform": lambda self, session, k: None,
        })
    assert "BadPartitions" in str(err.value)
    assert "partitions" in str(err.value)
    assert "an int >= 1" in str(err.value)


def test_partition_rows_keep_the_job_name_for_partition_zero() -> None:
    assert partition_names("app.Ship", 1) == ["app.Ship"]
    assert partition_names("app.Ship", 4) == ["app.Ship", "app.Ship#1/4", "app.Ship#2/4", "app.Ship#3/4"]
    for i, name in enumerate(partition_names("app.Ship", 4)):
        p = partition_of(name, 4)
        assert (p.job, p.index, p.count) == ("app.Ship", i, 4)
    # not a partition suffix: the name is the job's
    assert partition_of("app.Ship#4/4").job == "app.Ship#4/4"


# -- one scheduler: the same keys as one partition ---------------------------------------


def test_four_partitions_on_one_scheduler_enqueue_the_keys_one_partition_does(
    pg_settings: Settings, engine: sa.Engine, broker: Broker,
) -> None:
    seed(engine, range(1, 2001))
    with engine.begin() as c:  # holes, so ranges are not plain arithmetic on ids
        c.execute(items.update().where(items.c.id % 7 == 0).values(done=True))
    established(pg_settings)
    one = run_pass(ProcessItem, settings=pg_settings)  # partitions = 1, queue "items"
    sched = Scheduler(pg_settings, [Items4])
    fired = sched.run_once()
    assert sorted(fired) == sorted(partition_names(Items4.job_name, 4))
    results = sched.results
    assert sum(r.found for r in results) == one.found == 2000 - 2000 // 7
    assert sum(r.enqueued for r in results) == one.enqueued
    assert queued_keys(broker, "items4") == queued_keys(broker, "items")
    # balanced: the bounds are quantiles of the pending keys
    assert all(abs(r.found - one.found / 4) <= 1 for r in results), [r.found for r in results]
    recorded = runs.recent_runs(engine, job=Items4.job_name)
    assert sorted((r.partition_index, r.partition_count) for r in recorded) == [(i, 4) for i in range(4)]
    assert sorted(r.name for r in recorded) == [f"{Items4.job_name}#{i}/4" for i in range(4)]


def test_a_second_round_enqueues_nothing_twice_and_keeps_the_bounds(
    pg_settings: Settings, engine: sa.Engine, broker: Broker,
) -> None:
    seed(engine, range(1, 1001))
    established(pg_settings)
    sched = Scheduler(pg_settings, [Items4])
    sched.run_once()
    gen = partitions.read_state(engine, Items4.job_name, partition_names(Items4.job_name, 4)).gen
    schedules.trigger_now(engine)
    sched.run_once()
    second = sched.results[4:]
    assert [r.enqueued for r in second] == [0, 0, 0, 0]
    assert sum(r.already_queued for r in second) == 1000
    state = partitions.read_state(engine, Items4.job_name, partition_names(Items4.job_name, 4))
    assert state.gen == gen, "balanced partitions keep their bounds"
    assert all(g == gen for g, _ in state.scanned.values())


def test_a_partition_reads_only_its_range_in_sql(
    pg_settings: Settings, engine: sa.Engine,
) -> None:
    seed(engine, range(1, 101))
    established(pg_settings)
    Scheduler(pg_settings, [Items4]).ensure_schedules()
    span = key_range(Items4, 2, 4, engine, engine)
    assert (span.lower, span.upper) == ((50,), (75,))
    captured: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        captured.append(statement)

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        read = keyset.reader(engine, Items4().pending(), 1000, fast=False, upper=span.upper)
        rows = read(span.lower)
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert [r[0] for r in rows] == list(range(51, 76))
    assert any("<=" in s and ">" in s for s in captured), captured


# -- two schedulers share the partitions ------------------------------------------------------


def test_two_schedulers_claim_disjoint_partitions_and_together_cover_every_key(
    pg_settings: Settings, engine: sa.Engine, broker: Broker,
) -> None:
    seed(engine, range(1, 4001))
    established(pg_settings)
    a, b = Scheduler(pg_settings, [Items4]), Scheduler(pg_settings, [Items4])
    for s in (a, b):
        s.ensure_schedules()
    fired: dict[str, list[str]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def claim_rounds(s: Scheduler, who: str) -> None:
        for _ in range(2):
            barrier.wait()  # both schedulers claim at the same moment, twice
            claims = s.claim()  # the loop's claim: one partition of the class
            barrier.wait()
            fired[who] += [c.name for c in claims]
        for name in fired[who]:
            s.fire(name)

    threads = [threading.Thread(target=claim_rounds, args=(s, w)) for s, w in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"\npartitions per scheduler: a {fired['a']}, b {fired['b']}")
    assert not set(fired["a"]) & set(fired["b"]), fired
    assert sorted(fired["a"] + fired["b"]) == sorted(partition_names(Items4.job_name, 4))
    assert len(fired["a"]) == len(fired["b"]) == 2, "one each per round"
    assert queued_keys(broker, "items4") == list(range(1, 4001))
    recorded = runs.recent_runs(engine, job=Items4.job_name)
    assert sorted(r.partition_index for r in recorded) == [0, 1, 2, 3]
    assert {r.scheduler for r in recorded} == {a.owner, b.owner}


def test_a_lone_scheduler_runs_the_partitions_one_after_another_without_waiting_a_tick(
    pg_settings: Settings, engine: sa.Engine, broker: Broker,
) -> None:
    seed(engine, range(1, 2001))
    established(pg_settings)
    sched = Scheduler(pg_settings, [Items4])
    sched.ensure_schedules()
    assert len(sched.claim()) == 1, "one partition of a class at a time per scheduler"
    schedules.trigger_now(engine)
    with engine.begin() as c:
        c.execute(sa.text("UPDATE reconcile_schedules SET running_owner = NULL"))
    thread = threading.Thread(target=sched.run, kwargs={"tick": 2.0}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while len(sched.results) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sched.stop()
        thread.join(10)
    assert sorted(r.name for r in sched.results) == [f"{Items4.job_name}#{i}/4" for i in range(4)]
    assert queued_keys(broker, "items4") == list(range(1, 2001))
    recorded = sorted(runs.recent_runs(engine, job=Items4.job_name), key=lambda r: r.started_at)
    assert all(r.finished_at is not None for r in recorded)
    gaps = [(b.started_at - a.finished_at).total_seconds()  # type: ignore[operator]
            for a, b in itertools.pairwise(recorded)]
    assert min(gaps) >= 0, f"two partitions ran at once in one scheduler: {gaps}"
    assert max(gaps) < 1.0, f"the next partition waited for a tick (2 s): {gaps}"


# -- every key in exactly one partition, any key type --------------------------------------------


def ranges_cover(job: type[ReconciledJob], engine: sa.Engine, n: int) -> list[list[Any]]:
    """The keys each of ``n`` partitions' scans read, with freshly computed bounds."""
    codec = job.key_codec()
    stmt = job().pending()
    bounds = [codec.wire(k) for k in partitions.compute_bounds(engine, stmt, n)]
    assert len(bounds) <= n - 1
    out = []
    for i in range(n):
        span = range_of(job, bounds, 1, i, n)
        if span.empty:
            out.append([])
            continue
        read = keyset.reader(engine, stmt, 7, fast=True, upper=span.upper)
        got: list[Any] = []
        after = span.lower
        while True:
            rows = read(after)
            if not rows:
                break
            got += rows
            after = rows[-1]
        out.append(got)
    return out


def assert_exactly_once(parts: list[list[Any]], expected: set[Any]) -> None:
    flat = [k for p in parts for k in p]
    assert len(flat) == len(set(flat)), "a key was read by two partitions"
    assert set(flat) == expected, "a pending key was read by no partition"


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(st.tuples(st.integers(-(2**31), 2**31 - 1),
                               st.text("aAbB zé_-Z0", min_size=1, max_size=6)),
                     max_size=60, unique=True),
       n=st.integers(1, 9))
def test_every_composite_key_lands_in_exactly_one_partition(
    engine: sa.Engine, keys: list[tuple[int, str]], n: int,
) -> None:
    with engine.begin() as c:
        c.execute(regions.delete())
        if keys:
            c.execute(regions.insert(), [{"sku": s, "region": r} for s, r in keys])
    parts = ranges_cover(Stock3, engine, n)
    assert_exactly_once(parts, set(keys))
    if len(keys) >= n:
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1, sizes


@hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.sets(st.uuids(), max_size=40), n=st.integers(2, 6))
def test_every_uuid_key_lands_in_exactly_one_partition(
    engine: sa.Engine, keys: set[uuid.UUID], n: int,
) -> None:
    with engine.begin() as c:
        c.execute(tokens.delete())
        if keys:
            c.execute(tokens.insert(), [{"token": k} for k in keys])
    parts = ranges_cover(Tokens5, engine, n)
    assert_exactly_once(parts, {(k,) for k in keys})


def test_a_composite_key_class_enqueues_every_key_once_across_partitions(
    pg_settings: Settings, engine: sa.Engine, broker: Broker,
) -> None:
    with engine.begin() as c:
        c.execute(regions.insert(),
                  [{"sku": s, "region": r} for s in range(1, 51) for r in ("eu", "us", "ap")])
    established(pg_settings)
    sched = Scheduler(pg_settings, [Stock3])
    sched.run_once()
    assert [r.error for r in sched.results] == [None, None, None]
    got = sorted(tuple(orjson.loads(p)["args"]) for p in broker.queue_entries("stock3", 1000))
    assert got == sorted((s, r) for s in range(1, 51) for r in ("eu", "us", "ap"))
    assert [r.found for r in sched.results] == [50, 50, 50]


# -- changing N, Redis loss, kill switch ------------------------------------------------------------


def test_changing_the_partition_count_retires_the_surplus_rows(
    pg_settings: Settings, engine: sa.Engine, broker: Broker, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed(engine, range(1, 1001))
    established(pg_settings)
    Scheduler(pg_settings, [Items4]).run_once()

    def rows() -> list[str]:
        return sorted(s.name for s in schedules.list_schedules(engine))

    assert rows() == sorted(partition_names(Items4.job_name, 4))
    monkeypatch.setattr(Items4, "partitions", 2)
    two = Scheduler(pg_settings, [Items4])
    two.ensure_schedules()
    assert rows() == [Items4.job_name, f"{Items4.job_name}#1/2"]
    head = next(s for s in schedules.list_schedules(engine) if s.name == Items4.job_name)
    assert head.bounds is None, "bounds for 4 partitions are dropped"
    assert head.spec == "every 3600s, 2 partitions"
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1001, 1101)])
    two.run_once()  # the spec changed: both rows are due at once
    new = two.results
    assert [r.partition for r in new] == [(0, 2), (1, 2)]
    assert sum(r.found for r in new) == 1100
    assert sum(r.enqueued for r in new) == 100
    assert queued_keys(broker, "items4") == list(range(1, 1101))
    monkeypatch.setattr(Items4, "partitions", 1)
    one = Scheduler(pg_settings, [Items4])
    one.ensure_schedules()
    assert rows() == [Items4.job_name]
    one.run_once()
    assert [(r.partition, r.found) for r in one.results] == [(None, 1100)]


def test_a_redis_loss_makes_every_partition_due(
    pg_settings: Settings, engine: sa.Engine, broker: Broker,
) -> None:
    seed(engine, range(1, 501))
    established(pg_settings)
    sched = Scheduler(pg_settings, [Items4])
    sched.run_once()
    assert sched.run_once() == []  # nothing due: every 3600 s
    broker.flush_namespace()  # the epoch sentinel goes too: a loss
    fired = sched.run_once()
    assert sorted(fired) == sorted(partition_names(Items4.job_name, 4))
    loss = sched.results[4:]
    assert {r.trigger for r in loss} == {"redis_loss"}
    assert sum(r.enqueued for r in loss) == 500
    assert queued_keys(broker, "items4") == list(range(1, 501))


def test_a_disabled_class_records_each_partitions_backlog(
    pg_settings: Settings, engine: sa.Engine, broker: Broker,
) -> None:
    from reconcile.store import switches

    seed(engine, range(1, 401))
    established(pg_settings)
    switches.set_enabled(engine, Items4.job_name, False, "test")
    sched = Scheduler(pg_settings, [Items4])
    sched.run_once()
    assert all(r.disabled for r in sched.results)
    assert [r.found for r in sched.results] == [100, 100, 100, 100]
    assert broker.queue_length("items4") == 0


def test_back_pressure_defers_within_the_partitions_range(
    pg_settings: Settings, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed(engine, range(1, 2001))
    established(pg_settings)
    monkeypatch.setattr(Items4, "batch_size", 100)
    Scheduler(pg_settings, [Items4]).ensure_schedules()
    settings = pg_settings.with_overrides(pass_high_water=150)
    first = run_pass(Items4, settings=settings, partition=(1, 4))
    assert first.found + first.deferred == 500  # its range: keys 501-1000
    assert first.deferred > 0
    assert pending.count_after(engine, Items4().pending(), (500,), (1000,)) == 500


def test_quarantined_keys_are_dropped_by_the_partition_whose_range_holds_them(
    pg_settings: Settings, engine: sa.Engine, broker: Broker,
) -> None:
    from reconcile.store import quarantine

    seed(engine, range(1, 401))
    established(pg_settings)
    for key in (7, 260, 261):  # partitions 0 and 2 (ranges of 100 keys)
        quarantine.add(engine, Items4.job_name, [key], reason="test")
    sched = Scheduler(pg_settings, [Items4])
    sched.run_once()
    assert [(r.found, r.quarantined) for r in sched.results] == [(100, 1), (100, 0), (100, 2), (100, 0)]
    assert queued_keys(broker, "items4") == [k for k in range(1, 401) if k not in (7, 260, 261)]


def test_partitions_compute_bounds_and_scan_on_the_pending_database(
    pg_settings: Settings, engine: sa.Engine, broker: Broker, schema_url: str,
) -> None:
    from reconcile.store.engine import get_pending_engine

    # a second URL to the same database stands for the replica: the statements it
    # runs are captured (fault scenario 15 runs a real standby)
    sep = "&" if "?" in schema_url else "?"
    # fast_paths off: pages go through SQLAlchemy, whose statements the listener sees
    settings = pg_settings.with_overrides(pending_database_url=f"{schema_url}{sep}application_name=scan",
                                          fast_paths=False)
    scan = get_pending_engine(settings)
    assert scan is not get_engine_of(settings)
    seen: list[str] = []
    sa.event.listen(scan, "before_cursor_execute", lambda c, cur, stmt, *a: seen.append(stmt))
    seed(engine, range(1, 201))
    established(settings)
    sched = Scheduler(settings, [Items4])
    sched.run_once()
    assert [r.error for r in sched.results] == [None] * 4
    assert sum(r.found for r in sched.results) == 200
    assert queued_keys(broker, "items4") == list(range(1, 201))
    assert any("row_number()" in stmt for stmt in seen), "the bounds are computed on the scan's database"
    assert sum("<=" in stmt for stmt in seen) >= 3, "the ranges are scanned there"


def get_engine_of(settings: Settings) -> sa.Engine:
    from reconcile.store.engine import get_engine

    return get_engine(settings)


def test_the_cli_shows_each_partition_in_runs_and_schedules_and_fires_them_all(
    pg_settings: Settings, engine: sa.Engine,
) -> None:
    from click.testing import CliRunner

    from reconcile.cli import main

    def cli(*args: str) -> str:
        flags = ["--redis-url", pg_settings.redis_url, "--database-url", pg_settings.database_url,
                 "--namespace", pg_settings.namespace]
        out = CliRunner().invoke(main, [*args, *flags], env={"RECONCILE_APP": None})
        assert out.exit_code == 0, out.output
        return out.output

    seed(engine, range(1, 101))
    established(pg_settings)
    Scheduler(pg_settings, [Items4]).run_once()
    runs_out = cli("runs", "--job", Items4.job_name)
    for i in range(4):
        assert f"{Items4.job_name}#{i}/4 tick: found 25 enqueued 25" in runs_out
    listed = cli("schedules", "list")
    assert f"{Items4.job_name}#3/4 pass every 3600s, 4 partitions: next" in listed
    assert listed.count("scanned 25 keys of bounds gen 1") == 4
    head = [orjson.loads(line) for line in cli("schedules", "list", "--json").splitlines()
            if orjson.loads(line)["name"] == Items4.job_name]
    assert head[0]["bounds"] == [[25], [50], [75]]
    cli("schedules", "fire", Items4.job_name)
    now = schedules.database_now(engine)
    due = [s.name for s in schedules.list_schedules(engine) if s.next_run_at <= now]
    assert sorted(due) == sorted(partition_names(Items4.job_name, 4))
