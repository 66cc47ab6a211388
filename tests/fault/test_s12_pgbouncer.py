"""Scenario 12: the oracle workload through a real PgBouncer in transaction mode.

Every process (scheduler, workers) reaches PostgreSQL only through a private
``pgbouncer`` (:mod:`tests.fault.pgbouncer`, ``pool_mode = transaction``), and each
``perform`` runs ``FAULT_STATEMENTS`` distinct statements with bind parameters, which
psycopg would prepare on its connection after 5 executions (its default
``prepare_threshold``): under transaction pooling those names collide across server
connections. Mid-run PgBouncer is SIGKILLed and started again on the same port.

* one worker says ``database_pooler = transaction``; the other and the scheduler leave
  it at ``none`` and must detect the pooler themselves (one warning each);
* the control run (:func:`test_without_the_fix_prepared_statements_collide`) tells
  reconcile the pooler is in ``session`` mode, so it keeps psycopg's prepared
  statements and its own prepared checks, as every process did before
  ``database_pooler`` existed: the same workload then fails with prepared-statement
  errors, which shows the main scenario can fail;
* in-process checks of what the watchdog terminates behind the pooler: the server
  backend of the delivery's transaction, and nothing once that transaction is over
  (the server connection may be another client's by then).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from reconcile import ReconciledJob, config
from reconcile.config import load_settings, use_settings
from reconcile.errors import ConfigError
from reconcile.store import pending as pending_sql
from reconcile.store.engine import dispose_engines, make_engine
from reconcile.store.pooler import pooler_mode
from tests.fault.harness import SOAK, World
from tests.fault.pgbouncer import PgBouncer, pgbouncer_binary
from tests.fault.results import record
from tests.fault.servers import PgCluster

KEYS = 6_000 if SOAK else 2_000
STATEMENTS = 8
"""Distinct statements per perform (each prepared by psycopg after 5 executions)."""

PREPARED_ERROR = re.compile(r'prepared statement "[^"]+" (does not exist|already exists)'
                            r'|bind message supplies \d+ parameters')


@pytest.fixture
def bouncer(pg_cluster: PgCluster) -> Iterator[PgBouncer]:
    if pgbouncer_binary() is None:
        pytest.fail("pgbouncer is not installed (apt-get install pgbouncer; .ci/run does it)")
    server = PgBouncer(pg_cluster, pool_mode="transaction", pool_size=20)
    server.start()
    yield server
    server.destroy()


def _through(bouncer: PgBouncer, world: World, app_name: str, **env: Any) -> dict[str, Any]:
    return {"RECONCILE_DATABASE_URL": bouncer.url(world.dbname, application_name=app_name),
            "FAULT_STATEMENTS": STATEMENTS, **env}


def _log_matches(world: World, pattern: re.Pattern[str]) -> int:
    return sum(len(pattern.findall(p.tail(10_000_000))) for p in world.procs)


def test_oracle_through_pgbouncer_with_a_restart(world: World, bouncer: PgBouncer) -> None:
    world.seed(KEYS)
    world.scheduler(**_through(bouncer, world, "fault-scheduler", FAULT_EVERY=2))
    world.worker(concurrency=6, **_through(bouncer, world, "fault-worker",
                                           RECONCILE_DATABASE_POOLER="transaction"))
    world.worker(concurrency=6, **_through(bouncer, world, "fault-worker"))  # detects it
    world.wait(lambda: world.done() >= KEYS * 0.3, 120, "30% done")
    left = world.pending()
    t0 = time.monotonic()
    bouncer.restart()
    outage = time.monotonic() - t0
    at_restart = world.done()
    flowing = world.timed(lambda: world.done() >= at_restart + 50, 60,
                          "50 keys done after the PgBouncer restart")
    world.wait(lambda: world.pending() == 0, 180, "every key done after the restart")
    heal = time.monotonic() - t0
    f = world.figures()
    detected = _log_matches(world, re.compile("acting as database_pooler = transaction"))
    collisions = _log_matches(world, PREPARED_ERROR)
    record("12", f"oracle through PgBouncer (transaction pooling), {STATEMENTS} prepared-size "
                 f"statements per perform, SIGKILL + restart of PgBouncer with {left:,} of "
                 f"{KEYS:,} keys pending", f,
           heal=f"work flowing {flowing:.1f} s after the restart, all done {heal:.1f} s "
                f"(PgBouncer down {outage:.2f} s)",
           heal_seconds=flowing, target="work resumes within a few seconds; no prepared-statement error",
           notes=f"one worker with database_pooler = transaction, the other and the scheduler "
                 f"detecting it ({detected} detection warnings); {collisions} prepared-statement "
                 "errors; deliveries cut by the restart are re-scheduled without spending a retry")
    assert f.lost == 0
    assert f.dup_effects == 0
    assert collisions == 0
    assert detected == 2  # the scheduler and the worker left at none, once each
    assert flowing <= 15


def test_without_the_fix_prepared_statements_collide(world: World, bouncer: PgBouncer) -> None:
    """The control: ``database_pooler = session`` on a transaction pooler keeps every
    prepared statement, as reconcile did before the setting existed. The workload of
    the scenario above must then hit prepared-statement errors (it is what the fix
    prevents, so the scenario above can fail)."""
    world.seed(1_000)
    world.scheduler(**_through(bouncer, world, "fault-scheduler", RECONCILE_DATABASE_POOLER="session"))
    for _ in range(2):
        world.worker(concurrency=6, **_through(bouncer, world, "fault-worker",
                                               RECONCILE_DATABASE_POOLER="session"))
    seen = world.wait(lambda: _log_matches(world, PREPARED_ERROR), 120,
                      "a prepared-statement error in a worker's log")
    assert seen >= 1


# -- what the watchdog terminates behind the pooler ------------------------------------------

class _Slow(ReconciledJob):
    """Holds its transaction until told to go on; records the backend it ran on."""

    name = "fault.pgbouncer.Slow"
    every = 3600
    timeout = 30
    table = sa.Table("pgb_slow", sa.MetaData(), sa.Column("key", sa.BigInteger, primary_key=True),
                     sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()))
    started = threading.Event()
    release = threading.Event()
    seen: dict[str, Any] = {}

    def pending(self) -> Select[Any]:
        return sa.select(self.table.c.key).where(self.table.c.done.is_(False))

    def perform(self, session: Session, key: int) -> None:  # type: ignore[override]
        driver: Any = session.connection().connection.driver_connection
        type(self).seen = {"server_pid": session.execute(sa.text("SELECT pg_backend_pid()")).scalar(),
                           "libpq_pid": driver.info.backend_pid, "job": self}
        type(self).started.set()
        type(self).release.wait(20)
        session.execute(self.table.update().where(self.table.c.key == key).values(done=True))


@pytest.mark.parametrize("fast_paths", [True, False], ids=["fast", "reference"])
def test_the_watchdog_ends_the_server_backend_of_the_delivery(
        pg_cluster: PgCluster, bouncer: PgBouncer, tmp_path: Path, fast_paths: bool) -> None:
    dbname = "pgbw" + tmp_path.name[-8:].replace("-", "_").lower()
    pg_cluster.create_database(dbname)
    direct = sa.create_engine(pg_cluster.url(dbname))
    previous = config._current
    try:
        _Slow.table.metadata.create_all(direct)
        with direct.begin() as c:
            c.execute(_Slow.table.insert(), [{"key": 1}, {"key": 2}])
        settings = load_settings({"database_url": bouncer.url(dbname), "fast_paths": fast_paths},
                                 env={}, pyproject=False)
        use_settings(settings)
        from reconcile.store.engine import get_engine

        engine = get_engine(settings)
        outcomes: list[Any] = []
        _Slow.started.clear()
        _Slow.release.clear()
        runner = threading.Thread(target=lambda: outcomes.append(_Slow().execute([1])))
        runner.start()
        assert _Slow.started.wait(20)
        job = _Slow.seen["job"]
        assert pooler_mode(engine) == "transaction"  # detected on the first connection
        # libpq's pid is PgBouncer's own; the watchdog has the server's
        assert job.backend_pid == _Slow.seen["server_pid"] != _Slow.seen["libpq_pid"]
        assert job.backend_xact_start is not None
        assert pending_sql.terminate_backend(engine, job.backend_pid, job.backend_xact_start)
        _Slow.release.set()
        runner.join(30)
        assert outcomes == ["db_unavailable"]  # ended by the terminate: nothing committed
        with direct.connect() as c:
            assert c.execute(sa.text("SELECT count(*) FROM pgb_slow WHERE done")).scalar() == 0

        # a watchdog that comes late must not end the server connection's next client
        _Slow.started.clear()
        _Slow.release.set()
        assert _Slow().execute([2]) == "done"
        late = _Slow.seen["job"]
        assert not pending_sql.terminate_backend(engine, late.backend_pid, late.backend_xact_start)
    finally:
        config._current = previous
        dispose_engines()
        direct.dispose()
        pg_cluster.drop_database(dbname)


def test_options_behind_a_pooler_get_a_clear_error(bouncer: PgBouncer) -> None:
    url = bouncer.url("postgres", options="-csearch_path%3Dpublic")
    # set: refused when the settings are built
    with pytest.raises(ConfigError, match=r"database_url.*ALTER ROLE"):
        load_settings({"database_url": url, "database_pooler": "transaction"}, env={}, pyproject=False)
    # not set: PgBouncer refuses the parameter, and the error names the alternative
    engine = make_engine(load_settings({"database_url": url}, env={}, pyproject=False))
    try:
        with pytest.raises(ConfigError, match=r"unsupported startup parameter: options.*|ALTER ROLE"):
            engine.connect()
    finally:
        engine.dispose()


# -- pool sizing: one server connection per running delivery, plus perform's own -------------

def _stalled(world: World, quiet: float) -> Any:
    """A condition: true once no key was done for ``quiet`` seconds while keys are pending."""
    last = {"done": -1, "since": time.monotonic()}

    def check() -> bool:
        done, now = world.done(), time.monotonic()
        if done != last["done"]:
            last["done"], last["since"] = done, now
            return False
        return world.pending() > 0 and now - last["since"] >= quiet

    return check


@pytest.mark.parametrize("pool_size", [10, 21])
def test_pool_sizing_rule_for_a_perform_with_its_own_connection(
        world: World, pg_cluster: PgCluster, pool_size: int) -> None:
    """2 workers x 10 threads, each perform holding the delivery's server connection and
    asking for a second one (the demo's mailer): a server pool of 10 deadlocks (every
    server connection is held by a delivery waiting for another), 21 = 2 x 10 + 1 is the
    floor that always leaves one delivery able to finish."""
    bouncer = PgBouncer(pg_cluster, pool_mode="transaction", pool_size=pool_size,
                        extra={"query_wait_timeout": "120"})
    bouncer.start()
    try:
        world.seed(600)
        env = {"RECONCILE_DATABASE_POOLER": "transaction", "FAULT_OWN_CONNECTION": "1"}
        world.scheduler(RECONCILE_DATABASE_URL=bouncer.url(world.dbname, application_name="fault-scheduler"),
                        **env)
        for _ in range(2):
            world.worker(concurrency=10, RECONCILE_DATABASE_URL=bouncer.url(
                world.dbname, application_name="fault-worker"), **env)
        if pool_size < 2 * 10 + 1:
            world.wait(_stalled(world, 5.0), 60, "the drain to stall (pool deadlock)")
            assert world.pending() > 0
        else:
            world.wait(lambda: world.pending() == 0, 120, "every key done")
            f = world.figures()
            assert f.lost == 0 and f.dup_effects == 0
    finally:
        bouncer.destroy()


def test_session_pooling_keeps_prepared_statements_and_reads_the_server_pid(
        pg_cluster: PgCluster) -> None:
    from reconcile.store.delivery import DriverDelivery
    from reconcile.store.pooler import SERVER_PID

    bouncer = PgBouncer(pg_cluster, pool_mode="session", pool_size=5)
    bouncer.start()
    engine = make_engine(load_settings({"database_url": bouncer.url("postgres"),
                                        "database_pooler": "session"}, env={}, pyproject=False))
    try:
        with Session(engine) as session, session.begin():
            conn = session.connection()
            driver: Any = conn.connection.driver_connection
            server_pid = session.execute(sa.text("SELECT pg_backend_pid()")).scalar()
            assert driver.prepare_threshold == 5  # psycopg's default: session mode keeps them
            assert conn.connection.info[SERVER_PID] == server_pid != driver.info.backend_pid
            tx = DriverDelivery(session, True, None, lambda: True, pooler_mode(engine))
            assert tx.backend() == (server_pid, None)  # no round trip: read at connect
    finally:
        engine.dispose()
        bouncer.destroy()
