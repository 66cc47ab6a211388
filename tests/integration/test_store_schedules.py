"""Schedules: each tick is claimed exactly once, by the database clock.

Any number of schedulers may call ``claim_due`` at once; each tick goes to one of
them. A running schedule is not claimed again until finished, unless its claim went
stale (its scheduler died).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from reconcile.store import migrate, schedules
from reconcile.store.schedules import Claim, ScheduleSpec
from reconcile.store.tables import schedules as schedules_table

STALE = timedelta(minutes=5)


@pytest.fixture
def engine(schema_url: str) -> Iterator[Engine]:
    migrate.upgrade(schema_url)
    engine = sa.create_engine(schema_url, pool_size=10)
    yield engine
    engine.dispose()


def spec(name: str, first: timedelta = timedelta(0), text: str = "every 60s") -> ScheduleSpec:
    """A pass schedule first due at the database's now() + ``first``."""
    return ScheduleSpec(name, "pass", text, lambda db_now: db_now + first)


def hourly(name: str, previous: datetime, db_now: datetime) -> datetime:
    return db_now + timedelta(hours=1)


def by_name(engine: Engine) -> dict[str, schedules.Schedule]:
    return {row.name: row for row in schedules.list_schedules(engine)}


# -- ensure -------------------------------------------------------------------------


def test_ensure_creates_missing_schedules_from_the_database_clock(engine: Engine) -> None:
    before = schedules.database_now(engine)

    assert schedules.ensure(engine, [spec("a"), spec("b", timedelta(hours=1))]) == ["a", "b"]

    rows = by_name(engine)
    after = schedules.database_now(engine)
    assert before <= rows["a"].next_run_at <= after
    assert rows["b"].next_run_at - rows["a"].next_run_at == timedelta(hours=1)
    assert rows["a"].kind == "pass" and rows["a"].spec == "every 60s"
    assert rows["a"].running_owner is None


def test_ensure_keeps_the_next_tick_of_an_unchanged_schedule(engine: Engine) -> None:
    schedules.ensure(engine, [spec("a", timedelta(hours=1))])
    first = by_name(engine)["a"]

    assert schedules.ensure(engine, [spec("a", timedelta(hours=5))]) == []

    assert by_name(engine)["a"] == first


def test_ensure_reschedules_a_schedule_whose_spec_changed(engine: Engine) -> None:
    schedules.ensure(engine, [spec("a", timedelta(hours=1))])

    changed = schedules.ensure(engine, [spec("a", timedelta(hours=5), text="every 300s")])

    row = by_name(engine)["a"]
    assert changed == ["a"]
    assert row.spec == "every 300s"
    assert row.next_run_at - schedules.database_now(engine) > timedelta(hours=4)


def test_ensure_never_touches_other_schedules(engine: Engine) -> None:
    schedules.ensure(engine, [spec("old", timedelta(hours=1))])
    old = by_name(engine)["old"]

    schedules.ensure(engine, [spec("new")])

    assert by_name(engine)["old"] == old


def test_ensure_joins_the_callers_transaction(engine: Engine) -> None:
    with engine.connect() as conn:
        schedules.ensure(conn, [spec("a")])
        conn.rollback()

    assert schedules.list_schedules(engine) == []


def test_ensure_refuses_duplicate_and_naive_specs(engine: Engine) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        schedules.ensure(engine, [spec("a"), spec("a")])
    with pytest.raises(ValueError, match="timezone-aware"):
        schedules.ensure(engine, [ScheduleSpec("a", "pass", "x", lambda now: datetime(2026, 1, 1))])


# -- claims -------------------------------------------------------------------------


def test_a_due_schedule_is_claimed_once_and_advanced(engine: Engine) -> None:
    schedules.ensure(engine, [spec("a"), spec("later", timedelta(hours=1))])
    due_at = by_name(engine)["a"].next_run_at

    claims = schedules.claim_due(engine, "s1", ["a", "later"], hourly, STALE)

    assert [(c.name, c.kind, c.scheduled_for) for c in claims] == [("a", "pass", due_at)]
    row = by_name(engine)["a"]
    assert row.next_run_at == claims[0].db_now + timedelta(hours=1)
    assert row.running_owner == "s1"
    assert row.running_since == row.last_started_at == claims[0].db_now
    assert schedules.claim_due(engine, "s2", ["a", "later"], hourly, STALE) == []


def test_claims_are_limited_to_the_names_asked_for(engine: Engine) -> None:
    schedules.ensure(engine, [spec("a"), spec("b")])

    assert [c.name for c in schedules.claim_due(engine, "s1", ["b"], hourly, STALE)] == ["b"]
    assert schedules.claim_due(engine, "s1", [], hourly, STALE) == []


def test_due_is_decided_by_the_database_clock(engine: Engine) -> None:
    schedules.ensure(engine, [spec("a", timedelta(seconds=-1)), spec("b", timedelta(minutes=1))])

    claims = schedules.claim_due(engine, "s1", ["a", "b"], hourly, STALE)

    assert [c.name for c in claims] == ["a"]
    db_now = schedules.database_now(engine)
    assert claims[0].scheduled_for <= claims[0].db_now <= db_now
    assert db_now - claims[0].db_now < timedelta(seconds=30)


def test_a_running_schedule_is_not_claimed_until_it_finishes(engine: Engine) -> None:
    schedules.ensure(engine, [spec("a")])
    every_tick = lambda name, previous, now: previous + timedelta(microseconds=1)  # noqa: E731
    assert len(schedules.claim_due(engine, "s1", ["a"], every_tick, STALE)) == 1

    # Due again at once, but still running.
    assert schedules.claim_due(engine, "s2", ["a"], every_tick, STALE) == []

    assert schedules.finish(engine, "a", "s1") is True
    row = by_name(engine)["a"]
    assert row.running_owner is None and row.running_since is None
    assert row.last_finished_at is not None
    assert [c.name for c in schedules.claim_due(engine, "s2", ["a"], every_tick, STALE)] == ["a"]


def backdate_claim(engine: Engine, name: str, age: timedelta) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(schedules_table)
            .where(schedules_table.c.name == name)
            .values(running_since=sa.func.now() - age, next_run_at=sa.func.now() - age)
        )


def test_a_stale_running_claim_is_taken_over(engine: Engine) -> None:
    schedules.ensure(engine, [spec("a")])
    schedules.claim_due(engine, "dead", ["a"], hourly, STALE)
    backdate_claim(engine, "a", timedelta(minutes=4))
    assert schedules.claim_due(engine, "s2", ["a"], hourly, STALE) == []

    backdate_claim(engine, "a", timedelta(minutes=6))
    claims = schedules.claim_due(engine, "s2", ["a"], hourly, STALE)

    assert [c.name for c in claims] == ["a"]
    assert by_name(engine)["a"].running_owner == "s2"
    # The dead scheduler coming back cannot release the new owner's claim.
    assert schedules.finish(engine, "a", "dead") is False
    assert by_name(engine)["a"].running_owner == "s2"


def test_keep_running_protects_a_long_pass_from_takeover(engine: Engine) -> None:
    schedules.ensure(engine, [spec("a")])
    schedules.claim_due(engine, "s1", ["a"], hourly, STALE)
    backdate_claim(engine, "a", timedelta(minutes=6))

    assert schedules.keep_running(engine, "a", "s1") is True

    assert schedules.claim_due(engine, "s2", ["a"], hourly, STALE) == []
    assert schedules.keep_running(engine, "a", "s2") is False


def test_next_after_must_move_forward_and_be_aware(engine: Engine) -> None:
    schedules.ensure(engine, [spec("a")])

    with pytest.raises(ValueError, match="not after the tick"):
        schedules.claim_due(engine, "s1", ["a"], lambda name, prev, now: prev, STALE)
    with pytest.raises(ValueError, match="timezone-aware"):
        schedules.claim_due(engine, "s1", ["a"], lambda name, prev, now: datetime(2030, 1, 1), STALE)

    # Nothing was claimed by the failed calls.
    assert by_name(engine)["a"].running_owner is None


def test_each_tick_is_claimed_exactly_once_by_racing_schedulers(engine: Engine) -> None:
    names = [f"job{i}" for i in range(4)]
    ticks = 60  # per schedule, one second apart, all already due
    schedules.ensure(engine, [spec(n, timedelta(seconds=-ticks - 10)) for n in names])
    first = {n: row.next_run_at for n, row in by_name(engine).items()}

    def next_after(name: str, previous: datetime, now: datetime) -> datetime:
        last = first[name] + timedelta(seconds=ticks - 1)
        return previous + timedelta(seconds=1) if previous < last else now + timedelta(days=1)

    claimed: list[tuple[str, Claim]] = []
    lock = threading.Lock()
    start = threading.Barrier(3)
    deadline = time.monotonic() + 60

    def scheduler(owner: str) -> None:
        start.wait()
        while time.monotonic() < deadline:
            with lock:
                if len(claimed) >= len(names) * ticks:
                    return
            for claim in schedules.claim_due(engine, owner, names, next_after, STALE):
                with lock:
                    claimed.append((owner, claim))
                schedules.finish(engine, claim.name, owner)

    threads = [threading.Thread(target=scheduler, args=(f"s{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    fired = Counter((c.name, c.scheduled_for) for _, c in claimed)
    assert [key for key, n in fired.items() if n > 1] == []  # no tick twice
    for name in names:  # no tick skipped
        got = sorted(c.scheduled_for for _, c in claimed if c.name == name)
        assert got == [first[name] + timedelta(seconds=i) for i in range(ticks)]


# -- trigger_now and removal ----------------------------------------------------------


def test_trigger_now_makes_schedules_due_at_once(engine: Engine) -> None:
    schedules.ensure(engine, [spec("a", timedelta(hours=1)), spec("b", timedelta(hours=1)),
                              spec("c", timedelta(hours=1))])
    assert schedules.claim_due(engine, "s1", ["a", "b", "c"], hourly, STALE) == []

    assert schedules.trigger_now(engine, ["a"]) == 1
    assert [c.name for c in schedules.claim_due(engine, "s1", ["a", "b", "c"], hourly, STALE)] \
        == ["a"]

    assert schedules.trigger_now(engine) == 3
    assert [c.name for c in schedules.claim_due(engine, "s1", ["a", "b", "c"], hourly, STALE)] \
        == ["b", "c"]  # "a" is still running: it fires again once finished


def test_trigger_now_never_delays_an_overdue_schedule(engine: Engine) -> None:
    schedules.ensure(engine, [spec("a", timedelta(minutes=-10))])
    overdue = by_name(engine)["a"].next_run_at

    schedules.trigger_now(engine, ["a"])

    assert by_name(engine)["a"].next_run_at == overdue
    assert schedules.trigger_now(engine, []) == 0


def test_remove_deletes_only_the_named_schedules(engine: Engine) -> None:
    schedules.ensure(engine, [spec("a"), spec("b")])

    assert schedules.remove(engine, ["a", "zzz"]) == 1

    assert list(by_name(engine)) == ["b"]
