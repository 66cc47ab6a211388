"""reconcile's ReconciledJobs for the "reconciled" section (the ``--app`` of its workers).

The tables live in the schema that the worker's ``--database-url`` puts first on the
search_path (see :mod:`benchmarks.pg`), so they are declared without a schema here.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from reconcile import ReconciledJob

from . import probe

meta = sa.MetaData()
items = sa.Table(
    "items", meta,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("done", sa.Boolean, nullable=False),
)
# Only the column the job writes: with its identity key declared, SQLAlchemy would add
# RETURNING id to fetch the new key, which procrastinate's task and the raw floor do not
# (the INSERT is the same statement for all three systems this way)
effects = sa.Table(
    "effects", meta,
    sa.Column("item_id", sa.BigInteger, nullable=False),
)
pass_items = sa.Table(
    "pass_items", meta,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("done", sa.Boolean, nullable=False),
)


# Built once with bind parameters, as procrastinate's task and the raw floor send
# constant SQL with parameters (a statement built per call costs SQLAlchemy its
# construction and cache key each time: about a third of this job's CPU)
LOG_EFFECT = effects.insert().values(item_id=sa.bindparam("item_id"))
MARK_DONE = items.update().where(items.c.id == sa.bindparam("item_id")).values(done=True)


class ProcessItem(ReconciledJob):
    """The drain's job: in the protocol's one transaction, log an effect and mark the
    item done (which makes the key stop being pending)."""

    name = "bench.ProcessItem"
    queue = "rdrain"
    every = 3600  # no scheduler runs in the benchmark; passes are started by the driver

    def pending(self) -> Select[Any]:
        return sa.select(items.c.id).where(sa.not_(items.c.done))

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        params = {"item_id": item_id}
        session.execute(LOG_EFFECT, params)
        session.execute(MARK_DONE, params)
        probe.hit()


class PassItem(ReconciledJob):
    """The pass's job: its pending query pages through ``pass_items`` (never performed)."""

    name = "bench.PassItem"
    queue = "rpass"
    every = 3600

    def pending(self) -> Select[Any]:
        return sa.select(pass_items.c.id).where(sa.not_(pass_items.c.done))

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        session.execute(pass_items.update().where(pass_items.c.id == item_id).values(done=True))
