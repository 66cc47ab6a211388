"""A tiny app for ReconciledJob tests: items that need processing, and an effect log.

``effects`` has no unique constraint on purpose: a duplicate effect shows up as a
second row for the same item.
"""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from reconcile import ReconciledJob

app_metadata = sa.MetaData()
items = sa.Table(
    "items", app_metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
)
effects = sa.Table(
    "effects", app_metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("item_id", sa.BigInteger, nullable=False),
)


class MarksItemDone(ReconciledJob):
    """Base of test jobs over ``items``: a key is pending until perform marks it done.
    Subclasses change one option or one method, and say which in their docstring.
    Abstract: not a job of this app (passes and flushes see only its subclasses)."""

    abstract = True
    every = 3600
    queue = "items"

    def pending(self) -> Select[Any]:
        return sa.select(items.c.id).where(items.c.done.is_(False))

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        session.execute(items.update().where(items.c.id == item_id).values(done=True))


class ProcessItem(ReconciledJob):
    """Marks an item done and logs one effect row, in the job's transaction."""

    every = 3600
    queue = "items"
    retry = 3
    hold: threading.Event | None = None  # tests set it to keep perform inside its transaction
    entered: threading.Event | None = None

    def pending(self) -> Select[Any]:
        return sa.select(items.c.id).where(items.c.done.is_(False))

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        session.execute(effects.insert().values(item_id=item_id))
        if ProcessItem.entered is not None:
            ProcessItem.entered.set()
        if ProcessItem.hold is not None:
            ProcessItem.hold.wait(10)
        session.execute(items.update().where(items.c.id == item_id).values(done=True))


class ForgetfulItem(ReconciledJob):
    """A buggy job: logs an effect but never marks the item done (must not converge)."""

    every = 3600
    queue = "items"
    retry = 0

    def pending(self) -> Select[Any]:
        return sa.select(items.c.id).where(items.c.done.is_(False))

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        session.execute(effects.insert().values(item_id=item_id))


regions = sa.Table(
    "region_stock", app_metadata,
    sa.Column("sku", sa.Integer, primary_key=True),
    sa.Column("region", sa.String(8), primary_key=True),
    sa.Column("synced", sa.Boolean, nullable=False, server_default=sa.false()),
)


class SyncStock(ReconciledJob):
    """A composite key (sku, region)."""

    every = 3600
    queue = "items"

    def pending(self) -> Select[Any]:
        return sa.select(regions.c.sku, regions.c.region).where(regions.c.synced.is_(False))

    def perform(self, session: Session, sku: int, region: str) -> None:  # type: ignore[override]
        session.execute(
            regions.update().where(regions.c.sku == sku, regions.c.region == region).values(synced=True)
        )


class NewestItems(ReconciledJob):
    """A pending query with LIMIT cannot be restricted to one key: ``is_pending`` says how."""

    every = 3600
    queue = "items"
    calls = 0

    def pending(self) -> Select[Any]:
        return sa.select(items.c.id).where(items.c.done.is_(False)).order_by(items.c.id.desc()).limit(5)

    def is_pending(self, session: Session, *key: Any) -> bool:
        NewestItems.calls += 1
        return bool(session.execute(sa.select(items.c.done).where(items.c.id == key[0])).scalar() is False)

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        session.execute(items.update().where(items.c.id == item_id).values(done=True))


class HangingItem(ReconciledJob):
    """Hangs inside its transaction while ``release`` is unset (scenario: a job that hangs)."""

    every = 3600
    queue = "hang"
    timeout = 1.0
    release = threading.Event()
    finished = threading.Event()

    def pending(self) -> Select[Any]:
        return sa.select(items.c.id).where(items.c.done.is_(False))

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        session.execute(effects.insert().values(item_id=item_id))
        try:
            HangingItem.release.wait(30)
            session.execute(items.update().where(items.c.id == item_id).values(done=True))
        finally:
            HangingItem.finished.set()
