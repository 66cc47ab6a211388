"""One key, one identity, end to end: enqueue, the pass and delivery canonicalise keys.

Real Redis and PostgreSQL; the concurrency test runs two real worker processes.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from reconcile.broker import Broker, PushRecord
from reconcile.config import Settings
from reconcile.errors import InvalidKey
from reconcile.payload import new_jid
from reconcile.scheduler.passes import run_pass
from reconcile.store import quarantine
from reconcile.worker.executor import Executor
from tests.jobs_core import RECONCILE, ROOT, wait_for
from tests.keyed_app import (
    BY_N_NAME,
    TYPED_JOBS,
    Colour,
    SlowShip,
    keyed_metadata,
    ship_effects,
    ships,
    typed_effects,
    typed_rows,
)


@pytest.fixture
def engine(pg_settings: Settings) -> Iterator[sa.Engine]:
    from reconcile.keys import forget
    from reconcile.store.engine import dispose_engines, get_engine
    from reconcile.store.tables import metadata

    eng = get_engine(pg_settings)
    metadata.create_all(eng)
    keyed_metadata.create_all(eng)
    forget()
    yield eng
    dispose_engines()


def queued_args(broker: Broker, queue: str) -> list[list[Any]]:
    return [orjson.loads(r)["args"] for r in broker.queue_entries(queue, 10_000)]


def crafted(job: str, queue: str, key: list[Any]) -> PushRecord:
    """A payload written straight to Redis (an old client, or someone with access to
    Redis), with no uniqueness lock: only the delivery can canonicalise it."""
    body = {"queue": queue, "jid": new_jid(), "class": job, "args": key,
            "created_at": time.time(), "retry": 3, "enqueued_at": time.time()}
    return PushRecord(queue, 0.0, "", 0, orjson.dumps(body))


def drain_in_process(settings: Settings, broker: Broker, queue: str) -> list[str]:
    """Lease and run every job of ``queue`` one at a time; returns the settlement kinds
    by name (``"ack"``, ``"drop"``, ``"dead"``, ...)."""
    ex = Executor(settings, broker)
    codes: list[str] = []
    ops: list[Any] = []
    while True:
        got = broker.exchange("test-proc", [queue], 1, ops)
        ops = []
        if not got:
            return codes
        op = ex.run(got[0])
        codes.append(op.kind.name.lower())
        ops = [op]


# -- the defect, the way it happened: two workers, one row, three spellings ---------------


def spawn_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE_")}
    environ.update(
        RECONCILE_REDIS_URL=settings.redis_url, RECONCILE_NAMESPACE=settings.namespace,
        RECONCILE_DATABASE_URL=settings.database_url, RECONCILE_IDLE_WAIT="0.5",
        RECONCILE_POLL_INTERVAL="0.2", PYTHONUNBUFFERED="1",
    )
    with open(log, "ab") as out:
        return subprocess.Popen([*RECONCILE, "worker", "--app", "tests.keyed_app", "-q", "ships", "-c", "4"],
                                cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_one_row_enqueued_as_3_and_3_string_and_3_float_has_one_effect(
    pg_settings: Settings, engine: sa.Engine, broker: Broker, tmp_path: Path
) -> None:
    rows = 40
    with engine.begin() as c:
        c.execute(ships.insert(), [{"id": i} for i in range(1, rows + 1)])
    workers = [spawn_worker(pg_settings, tmp_path / f"w{i}.log") for i in range(2)]
    try:
        wait_for(lambda: len(broker.processes()) == 2, timeout=30, what="two registered workers")
        for round_ in range(3):
            for i in range(1, rows + 1):
                # through the client (uniqueness applies to the canonical key) ...
                SlowShip.perform_async(i)
                SlowShip.perform_async(str(i))
                SlowShip.perform_async(float(i))
                # ... and straight into Redis, where only the delivery canonicalises
                broker.push([crafted(SlowShip.job_name, "ships", [str(i)]),
                             crafted(SlowShip.job_name, "ships", [float(i)]),
                             crafted(SlowShip.job_name, "ships", [f" {i} "])])
            if round_ == 0:
                # the pass sees the same identity as perform_async: all already queued
                result = run_pass(SlowShip, settings=pg_settings)
                assert result.enqueued + result.already_queued == result.found

        def settled() -> bool:
            with engine.connect() as c:
                left = c.execute(sa.select(sa.func.count()).where(ships.c.shipped.is_(False))).scalar()
            return left == 0 and broker.queue_stats(["ships"])[0][1] == 0 and not any(
                broker.leased_count(p["id"]) for p in broker.processes())

        wait_for(settled, timeout=90, what="every row shipped and every delivery settled")
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(30)
    with engine.connect() as c:
        per_row = dict(c.execute(sa.select(ship_effects.c.ship_id, sa.func.count())
                                 .group_by(ship_effects.c.ship_id)).all())
        args = {a for (a,) in c.execute(sa.select(ship_effects.c.arg))}
    duplicates = {k: v for k, v in per_row.items() if v != 1}
    print(f"\nrows {rows}, effects {sum(per_row.values())}, rows with duplicate effects {len(duplicates)}")
    assert len(per_row) == rows and not duplicates, f"duplicate effects: {duplicates}"
    assert all(a.isdigit() for a in args), f"perform received non-canonical keys: {args}"
    assert broker.set_sizes().get("dead", 0) == 0


# -- each column type: enqueue, pass and delivery agree ----------------------------------

U = uuid.UUID("0b9e2c1d-4f6a-4b8c-9d0e-1f2a3b4c5d6e")
AT = datetime(2026, 12, 2, 10, 30, tzinfo=UTC)
ROW = {"n": 7, "big": 2**40, "small": 12, "name": "eu-west", "code": "ab", "uid": U,
       "price": Decimal("3.10"), "day": date(2026, 12, 2), "at": AT, "local_at": datetime(2026, 12, 2, 1, 2),
       "flag": True, "colour": Colour.green, "doc": {"a": 1, "b": [2]}}
SPELLING = {  # another spelling of each column's value, as a request parameter would give it
    "n": "7", "big": str(2**40), "small": 12.0, "name": "eu-west", "code": "ab    ", "uid": str(U).upper(),
    "price": "3.1", "day": "2026-12-02", "at": "2026-12-02T12:30:00+02:00", "local_at": "2026-12-02T01:02:00",
    "flag": "true", "colour": "green", "doc": {"b": [2], "a": 1},
}
NATIVE = {  # what perform receives
    "n": 7, "big": 2**40, "small": 12, "name": "eu-west", "code": "ab", "uid": U, "price": Decimal("3.1"),
    "day": date(2026, 12, 2), "at": AT, "local_at": datetime(2026, 12, 2, 1, 2), "flag": True,
    "colour": "green", "doc": {"a": 1, "b": [2]},
}


@pytest.mark.parametrize("column", sorted(TYPED_JOBS))
def test_each_column_type_has_one_identity_across_enqueue_pass_and_delivery(
    column: str, pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    job = TYPED_JOBS[column]
    job.received.clear()
    with engine.begin() as c:
        c.execute(typed_rows.insert().values(**ROW))
    assert job.perform_async(SPELLING[column]) is not None
    assert job.perform_async(ROW[column]) is None, "the same row: the uniqueness lock is held"
    result = run_pass(job, settings=pg_settings)
    assert (result.found, result.enqueued, result.already_queued) == (1, 0, 1), result.summary()
    [[wire]] = queued_args(broker, "typed")
    assert job.key_codec().wire([ROW[column]]) == [wire]
    broker.push([crafted(job.job_name, "typed", [SPELLING[column]])])  # a second, lock-free delivery
    codes = drain_in_process(pg_settings, broker, "typed")
    assert codes == ["ack", "drop"], "performed once, then already done"
    assert job.received == [(NATIVE[column],)]
    assert type(job.received[0][0]) is type(NATIVE[column])
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(typed_effects)).scalar() == 1


def test_a_composite_key_is_canonical_column_by_column(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    with engine.begin() as c:
        c.execute(typed_rows.insert().values(**ROW))
    assert BY_N_NAME.perform_async("7", "eu-west") is not None
    assert BY_N_NAME.perform_async(7.0, "eu-west") is None
    assert queued_args(broker, "typed") == [[7, "eu-west"]]


# -- keys that cannot be canonicalised ----------------------------------------------------


def test_a_bad_key_is_refused_at_enqueue_naming_the_column(pg_settings: Settings, engine: sa.Engine,
                                                          broker: Broker) -> None:
    job = TYPED_JOBS["n"]
    with pytest.raises(InvalidKey, match=r"By_n: key column 'n' \(INTEGER\): 3.5 is not a whole number"):
        job.perform_async(3.5)
    with pytest.raises(InvalidKey, match="True"):
        job.perform_async(True)
    with pytest.raises(InvalidKey, match="'name' \\(TEXT\\): 3 is not a string"):
        TYPED_JOBS["name"].perform_async(3)
    with pytest.raises(InvalidKey):
        job.perform_bulk([[1], [2], ["x"]])
    assert queued_args(broker, "typed") == [], "a bulk call with one bad key writes nothing"


def test_a_crafted_key_that_cannot_be_canonicalised_goes_dead_and_is_not_quarantined(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    job = TYPED_JOBS["n"]
    broker.push([crafted(job.job_name, "typed", ["seven"])])
    assert drain_in_process(pg_settings, broker, "typed") == ["dead"]
    [(member, _)] = broker.set_entries("dead", 0, -1)
    dead = orjson.loads(member)
    assert dead["error_class"] == "InvalidKey"
    assert "key column 'n' (INTEGER): 'seven' is not a whole number" in dead["error_message"]
    assert quarantine.keys(engine, job.job_name) == set(), "no identity to quarantine under"


def test_a_key_quarantined_in_another_spelling_is_skipped_by_the_pass(
    pg_settings: Settings, engine: sa.Engine, broker: Broker
) -> None:
    job = TYPED_JOBS["n"]
    with engine.begin() as c:
        c.execute(typed_rows.insert().values(**ROW))
    quarantine.add(engine, job.job_name, ["7"], reason="died before keys were canonical",
                   error_class="RuntimeError", error_message="x", payload={})
    result = run_pass(job, settings=pg_settings)
    assert (result.found, result.quarantined, result.enqueued) == (1, 1, 0), result.summary()
