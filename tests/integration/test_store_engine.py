"""Engines: one pooled engine per database URL, pre-pinged, disposable."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from reconcile.config import Settings
from reconcile.store.engine import dispose_engines, get_engine, pool_size
from reconcile.store.pooler import pooler_mode


@pytest.fixture(autouse=True)
def fresh_engines() -> Iterator[None]:
    dispose_engines()
    yield
    dispose_engines()


def test_one_engine_per_database_url(pg_settings: Settings, database_url: str) -> None:
    engine = get_engine(pg_settings)

    assert get_engine(pg_settings) is engine
    assert get_engine(pg_settings.with_overrides(concurrency=50)) is engine
    assert get_engine(pg_settings.with_overrides(database_url=database_url)) is not engine


def test_the_engine_follows_the_urls_search_path(pg_settings: Settings, pg_schema: str) -> None:
    with get_engine(pg_settings).connect() as conn:
        assert conn.execute(sa.text("SELECT current_schema()")).scalar() == pg_schema


def test_the_pool_is_sized_for_the_worker_threads(pg_settings: Settings) -> None:
    engine = get_engine(pg_settings.with_overrides(concurrency=20))

    assert isinstance(engine.pool, sa.QueuePool)
    assert engine.pool.size() == pool_size(pg_settings.with_overrides(concurrency=20)) == 22
    assert pool_size(pg_settings.with_overrides(concurrency=1)) == 5


def test_dispose_forgets_the_engines(pg_settings: Settings) -> None:
    engine = get_engine(pg_settings)

    dispose_engines()

    assert get_engine(pg_settings) is not engine


def test_a_connection_killed_while_idle_in_the_pool_is_replaced(
    pg_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconcile.store import engine as engines

    engine = get_engine(pg_settings)
    with engine.connect() as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    with sa.create_engine(pg_settings.database_url).connect() as admin:
        admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    monkeypatch.setattr(engines, "PING_AFTER_IDLE", 0.0)  # as if it had been idle a while
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar() != pid


def test_a_connection_reused_at_once_is_not_pinged(
    pg_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The busy path skips the ping: a connection killed moments ago surfaces as an
    error on its next use (a job failure, retried), and the pool then replaces it."""
    from reconcile.store import engine as engines

    monkeypatch.setattr(engines, "PING_AFTER_IDLE", 3600.0)
    engine = get_engine(pg_settings)
    with engine.connect() as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    with sa.create_engine(pg_settings.database_url).connect() as admin:
        admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    with pytest.raises(sa.exc.OperationalError), engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar() != pid


def test_the_ping_keeps_the_connections_prepared_statements(
    pg_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle ping opens no transaction, so nothing rolls back: psycopg deallocates
    every prepared statement of a connection after a rollback once it holds any, and
    the ReconciledJob key checks would have to be prepared again after each idle spell."""
    from reconcile.store import engine as engines

    engine = get_engine(pg_settings)
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        assert driver is not None
        driver.execute("SELECT 1", prepare=True)  # psycopg holds a statement of its own
        conn.exec_driver_sql("PREPARE reconcile_test AS SELECT 1")
        conn.commit()
    monkeypatch.setattr(engines, "PING_AFTER_IDLE", 0.0)  # as if it had been idle a while
    with engine.connect() as conn:
        assert conn.connection.driver_connection is driver, "the same pooled connection"
        names = conn.exec_driver_sql("SELECT name FROM pg_prepared_statements").scalars().all()
        assert "reconcile_test" in names


def test_driver_arguments_in_the_url_reach_the_connection(pg_settings: Settings) -> None:
    # before issue 12 a prepare_threshold in the URL raised TypeError at connect
    url = pg_settings.database_url + "&prepare_threshold=none&application_name=rc-engine-test"
    engine = get_engine(pg_settings.with_overrides(database_url=url))
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        assert driver is not None and driver.prepare_threshold is None
        assert conn.execute(sa.text("SHOW application_name")).scalar() == "rc-engine-test"


def test_settings_give_the_threshold_and_the_application_name(pg_settings: Settings) -> None:
    engine = get_engine(pg_settings.with_overrides(database_prepare_threshold=2,
                                                   database_application_name="rc-settings-test"))
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        assert driver is not None and driver.prepare_threshold == 2
        assert conn.execute(sa.text("SHOW application_name")).scalar() == "rc-settings-test"


def test_a_direct_connection_is_detected_as_no_pooler(
        pg_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    engine = get_engine(pg_settings)
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        assert driver is not None and driver.prepare_threshold == 5  # psycopg's default kept
    assert pooler_mode(engine) == "none"
    assert "connection pooler" not in caplog.text


def test_transaction_mode_turns_prepared_statements_off_on_every_connection(
        pg_settings: Settings, database_url: str) -> None:
    # the plain URL: behind a pooler the schema's options= would be refused
    engine = get_engine(pg_settings.with_overrides(database_url=database_url, database_pooler="transaction"))
    conns = [engine.connect() for _ in range(3)]
    try:
        assert pooler_mode(engine) == "transaction"
        assert all(c.connection.driver_connection.prepare_threshold is None  # type: ignore[union-attr]
                   for c in conns)
    finally:
        for c in conns:
            c.close()
