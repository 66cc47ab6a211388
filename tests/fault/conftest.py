"""Fixtures of the fault suite: a private PostgreSQL cluster (one per session, since
``initdb`` takes seconds), a private Redis per test, and a :class:`World` per test.

Every test here is marked ``fault``. The servers are started from the binaries on the
machine (``redis-server``, ``initdb``/``pg_ctl``) on free ports; only they are ever
stopped, killed or restarted by the scenarios.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconcile import config
from tests.fault.harness import World
from tests.fault.servers import PgCluster, RedisServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.fault)


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: the fault suite starts its own")
    cluster = PgCluster()
    try:
        cluster.init()
        cluster.start()
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.destroy()


MakeRedis = Callable[..., RedisServer]


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[MakeRedis]:
    servers: list[RedisServer] = []

    def make(maxmemory: str | None = None, policy: str = "noeviction") -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(servers)}", maxmemory, policy)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


MakeWorld = Callable[..., World]


@pytest.fixture
def make_world(pg_cluster: PgCluster, make_redis: MakeRedis, tmp_path: Path) -> Iterator[MakeWorld]:
    """``make_world(maxmemory=None, policy="noeviction")``: a fresh World, closed afterwards."""
    worlds: list[World] = []
    previous = config._current

    def make(maxmemory: str | None = None, policy: str = "noeviction") -> World:
        world = World(pg_cluster, make_redis(maxmemory, policy), tmp_path / f"world{len(worlds)}")
        worlds.append(world)
        world.upgrade()
        return world

    yield make
    for world in worlds:
        world.close()
    config._current = previous


@pytest.fixture
def world(make_world: MakeWorld) -> World:
    return make_world()
