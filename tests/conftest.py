"""Shared fixtures: real Redis and real PostgreSQL, each test isolated.

Services come from ``REDIS_URL`` / ``DATABASE_URL``. Without them, a Docker engine
gives throwaway containers (testcontainers); without Docker either, the local default
servers (127.0.0.1:6379, 127.0.0.1:5432 database ``test``) are used if they answer.
If none of that works the run fails: nothing is silently skipped.

Isolation: every test gets its own Redis namespace (``t<hex>``) and its own
PostgreSQL schema (put first on ``search_path`` through the URL), dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import redis
import sqlalchemy as sa

from reconcile.config import Settings, load_settings, use_settings

LOCAL_REDIS = "redis://127.0.0.1:6379/0"
LOCAL_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _docker_available() -> bool:
    return shutil.which("docker") is not None and os.path.exists("/var/run/docker.sock")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    if _docker_available():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7") as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
        return
    try:
        redis.Redis.from_url(LOCAL_REDIS).ping()
    except redis.RedisError as exc:
        pytest.fail(f"no Redis: set REDIS_URL or start redis-server on 127.0.0.1:6379 ({exc})")
    yield LOCAL_REDIS


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver="psycopg") as container:
            yield container.get_connection_url()
        return
    try:
        sa.create_engine(LOCAL_PG).connect().close()
    except sa.exc.OperationalError as exc:
        pytest.fail(f"no PostgreSQL: set DATABASE_URL or start it on 127.0.0.1:5432 ({exc})")
    yield LOCAL_PG


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def settings(redis_url: str, namespace: str) -> Iterator[Settings]:
    """Settings for this test (own namespace), installed as the process settings."""
    s = load_settings(
        {"redis_url": redis_url, "namespace": namespace, "lease_seconds": 3.0,
         "poll_interval": 0.2, "idle_wait": 0.5, "shutdown_timeout": 2.0},
        env={}, pyproject=False,
    )
    use_settings(s)
    yield s
    from reconcile.broker import get_broker

    get_broker(s).flush_namespace()


@pytest.fixture
def broker(settings: Settings):  # type: ignore[no-untyped-def]
    from reconcile.broker import get_broker

    return get_broker(settings)


@pytest.fixture
def pg_schema(database_url: str) -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped after the test; returns its name."""
    name = "t" + uuid.uuid4().hex[:12]
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    yield name
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
    engine.dispose()


@pytest.fixture
def schema_url(database_url: str, pg_schema: str) -> str:
    """``database_url`` with ``search_path`` set to this test's schema (then public)."""
    sep = "&" if "?" in database_url else "?"
    return f"{database_url}{sep}options={quote(f'-csearch_path={pg_schema},public')}"


@pytest.fixture
def pg_settings(settings: Settings, schema_url: str) -> Settings:
    """Settings with both Redis (own namespace) and PostgreSQL (own schema)."""
    s = settings.with_overrides(database_url=schema_url)
    use_settings(s)
    return s


@pytest.fixture
def engine(schema_url: str) -> Iterator[sa.Engine]:
    """An engine on this test's schema, migrated to head (framework tables only).
    Tests of a ReconciledJob app override it with one that also creates the app tables."""
    from reconcile.store import migrate

    migrate.upgrade(schema_url)
    eng = sa.create_engine(schema_url)
    yield eng
    eng.dispose()


@pytest.fixture
def app_engine(pg_settings: Settings) -> Iterator[sa.Engine]:
    """reconcile's engine for this test's schema, with the framework tables and the
    tables of ``tests/reconciled_app.py``; engines are disposed afterwards."""
    from reconcile.store.engine import dispose_engines, get_engine
    from reconcile.store.tables import metadata
    from tests.reconciled_app import app_metadata

    eng = get_engine(pg_settings)
    metadata.create_all(eng)
    app_metadata.create_all(eng)
    yield eng
    dispose_engines()
