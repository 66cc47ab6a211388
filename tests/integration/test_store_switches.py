"""Kill switches: per-job on/off in PostgreSQL, cached per process for a few seconds."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from reconcile.config import Settings
from reconcile.store import switches
from reconcile.store.switches import SwitchCache

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Factory:
    """Hands out ``engine`` and counts database reads; ``engine`` can be swapped."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.calls = 0

    def __call__(self) -> Engine:
        self.calls += 1
        return self.engine


def test_switches_are_stored_with_their_reason(engine: Engine) -> None:
    switches.set_enabled(engine, "SendInvoice", False, "mailer outage")
    switches.set_enabled(engine, "Sync", True)

    found = switches.all_switches(engine)
    assert set(found) == {"SendInvoice", "Sync"}
    assert (found["SendInvoice"].enabled, found["SendInvoice"].reason) == (False, "mailer outage")
    assert found["Sync"].enabled is True and found["Sync"].reason is None


def test_switching_again_replaces_the_row(engine: Engine) -> None:
    switches.set_enabled(engine, "A", False, "incident")
    before = switches.all_switches(engine)["A"]

    switches.set_enabled(engine, "A", True, "fixed")

    after = switches.all_switches(engine)["A"]
    assert (after.enabled, after.reason) == (True, "fixed")
    assert after.changed_at >= before.changed_at


def test_a_job_without_a_switch_is_enabled(engine: Engine) -> None:
    assert SwitchCache(lambda: engine).is_enabled("Anything") is True


def test_the_cache_rereads_only_after_its_ttl(engine: Engine) -> None:
    clock, factory = Clock(), Factory(engine)
    cache = SwitchCache(factory, ttl=5.0, clock=clock)
    assert cache.is_enabled("A") is True

    switches.set_enabled(engine, "A", False, "stop")
    clock.now += 4.9
    assert cache.is_enabled("A") is True  # still cached
    assert factory.calls == 1

    clock.now += 0.1
    assert cache.is_enabled("A") is False
    assert factory.calls == 2


def test_a_fresh_read_bypasses_the_cache(engine: Engine) -> None:
    cache = SwitchCache(lambda: engine, ttl=60.0, clock=Clock())
    assert cache.is_enabled("A") is True
    switches.set_enabled(engine, "A", False, "stop")

    assert cache.is_enabled("A", fresh=True) is False


def test_invalidate_forces_a_reread(engine: Engine) -> None:
    cache = SwitchCache(lambda: engine, ttl=60.0, clock=Clock())
    assert cache.is_enabled("A") is True
    switches.set_enabled(engine, "A", False, "stop")

    cache.invalidate()

    assert cache.is_enabled("A") is False


def test_an_unreachable_database_keeps_the_last_known_switches_and_logs_once(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    switches.set_enabled(engine, "A", False, "stop")
    clock, factory = Clock(), Factory(engine)
    cache = SwitchCache(factory, ttl=5.0, clock=clock)
    assert cache.is_enabled("A") is False

    down = sa.create_engine(UNREACHABLE)
    factory.engine = down
    with caplog.at_level(logging.INFO, logger="reconcile.switches"):
        for _ in range(3):
            clock.now += 5
            assert cache.is_enabled("A") is False
            assert cache.is_enabled("B") is True
        assert cache.is_enabled("A", fresh=True) is False
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "last known" in warnings[0].getMessage()

        factory.engine = engine
        switches.set_enabled(engine, "A", True, "fixed")
        clock.now += 5
        assert cache.is_enabled("A") is True
    assert any("readable again" in r.getMessage() for r in caplog.records)
    down.dispose()


def test_an_unreachable_database_at_first_read_means_enabled() -> None:
    down = sa.create_engine(UNREACHABLE)

    assert SwitchCache(lambda: down, clock=Clock()).is_enabled("A") is True
    down.dispose()


def test_one_cache_per_database_and_ttl(pg_settings: Settings) -> None:
    cache = switches.switch_cache(pg_settings)

    assert switches.switch_cache(pg_settings) is cache
    assert cache._ttl == pg_settings.switch_cache_seconds
    other = pg_settings.with_overrides(switch_cache_seconds=1.0)
    assert switches.switch_cache(other) is not cache
