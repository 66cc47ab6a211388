"""Back-pressure: a pass stops enqueuing above its class's high water and records the
rest as deferred; the next pass, level-triggered, finds them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from reconcile.broker import Broker
from reconcile.config import Settings
from reconcile.errors import ConfigError
from reconcile.scheduler.passes import high_water_of, run_pass
from reconcile.store import pending, runs
from tests.reconciled_app import ProcessItem, items


@pytest.fixture
def engine(app_engine: sa.Engine) -> sa.Engine:
    return app_engine


@pytest.fixture
def small_pages() -> Iterator[None]:
    """Pages of 100 keys, so that a pass of 1,000 keys checks its backlog 9 times."""
    saved = ProcessItem.batch_size
    ProcessItem.batch_size = 100
    yield
    ProcessItem.batch_size = saved


def seed(engine: sa.Engine, n: int) -> None:
    with engine.begin() as c:
        c.execute(items.insert(), [{"id": i} for i in range(1, n + 1)])


def drain_queue(broker: Broker, n: int) -> None:
    """Take ``n`` jobs off the class's queue (as workers would, without running them)."""
    got = broker.exchange("test-proc", [ProcessItem.queue], n)
    assert len(got) == n


def test_without_a_high_water_a_pass_enqueues_every_pending_key(
    pg_settings: Settings, engine: sa.Engine, small_pages: None,
) -> None:
    seed(engine, 1000)
    result = run_pass(ProcessItem, settings=pg_settings)
    assert (result.found, result.enqueued, result.deferred) == (1000, 1000, 0)


def test_a_pass_stops_above_the_high_water_and_records_the_rest_as_deferred(
    pg_settings: Settings, engine: sa.Engine, broker: Broker, small_pages: None,
) -> None:
    seed(engine, 1000)
    settings = pg_settings.with_overrides(pass_high_water=250)
    result = run_pass(ProcessItem, settings=settings)
    # pages of 100 land while the backlog is at most 250: the 4th page takes it to 400
    # at most (chunks in flight may land after a check), then the pass stops
    assert 300 <= result.enqueued <= 500
    assert result.found == result.enqueued
    assert result.deferred == 1000 - result.found
    assert broker.queue_length(ProcessItem.queue) == result.enqueued
    recorded = runs.recent_runs(engine, job=ProcessItem.job_name)[0]
    assert (recorded.found, recorded.enqueued, recorded.deferred) == (
        result.found, result.enqueued, result.deferred)
    assert f"deferred {result.deferred} (high water)" in result.summary()


def test_the_next_pass_finds_the_deferred_keys_once_the_queue_drains(
    pg_settings: Settings, engine: sa.Engine, broker: Broker, small_pages: None,
) -> None:
    seed(engine, 1000)
    settings = pg_settings.with_overrides(pass_high_water=250)
    first = run_pass(ProcessItem, settings=settings)
    # while nothing drains, a second pass defers everything it has not queued already
    stalled = run_pass(ProcessItem, settings=settings)
    assert stalled.enqueued == 0
    assert stalled.already_queued + stalled.deferred == 1000
    drain_queue(broker, first.enqueued)
    passes = [first]
    while sum(p.enqueued for p in passes) < 1000:
        nxt = run_pass(ProcessItem, settings=settings)
        assert nxt.enqueued > 0, "a pass after the queue drained must enqueue"
        passes.append(nxt)
        drain_queue(broker, broker.queue_length(ProcessItem.queue))
        assert len(passes) < 10
    assert sum(p.enqueued for p in passes) == 1000  # each key once: the locks dedupe


def test_with_jitter_the_keys_this_pass_scheduled_count_toward_the_backlog(
    pg_settings: Settings, engine: sa.Engine, broker: Broker, small_pages: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed(engine, 1000)
    monkeypatch.setattr(ProcessItem, "jitter", 3600.0)  # everything goes to the scheduled set
    result = run_pass(ProcessItem, settings=pg_settings.with_overrides(pass_high_water=250))
    assert broker.queue_length(ProcessItem.queue) == 0
    assert 300 <= result.enqueued <= 500
    assert result.deferred == 1000 - result.found


def test_the_class_option_overrides_the_setting(pg_settings: Settings) -> None:
    settings = pg_settings.with_overrides(pass_high_water=500)
    assert high_water_of(ProcessItem, settings) == 500
    class Capped(ProcessItem):
        high_water = 50
    class Unlimited(ProcessItem):
        high_water = 0
    assert high_water_of(Capped, settings) == 50
    assert high_water_of(Unlimited, settings) == 0


def test_bad_high_water_values_are_refused_with_the_rule() -> None:
    with pytest.raises(ConfigError, match="high_water must be None or an int >= 0"):
        class Bad(ProcessItem):
            high_water = -1
    with pytest.raises(ConfigError, match="pass_high_water"):
        Settings().with_overrides(pass_high_water=-5)


def test_count_after_counts_the_keys_past_a_page(engine: sa.Engine) -> None:
    seed(engine, 300)
    stmt = ProcessItem().pending()
    assert pending.count_after(engine, stmt, None) == 300
    assert pending.count_after(engine, stmt, (120,)) == 180
    assert pending.count_after(engine, stmt, (300,)) == 0
