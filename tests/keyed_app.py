"""An app whose ReconciledJobs are keyed by every column type reconcile canonicalises.

``typed_rows`` has one column per type; ``TypedJob`` subclasses each key by one of
them, and record what ``perform`` received in ``typed_effects`` (no unique constraint:
a duplicate effect is a second row). ``SlowShip`` holds its transaction a while, so
two deliveries of one row overlap unless their lock ids are the same.
"""

from __future__ import annotations

import enum
import time
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from reconcile import ReconciledJob

keyed_metadata = sa.MetaData()


class Colour(enum.Enum):
    red = "r"
    green = "g"


typed_rows = sa.Table(
    "typed_rows", keyed_metadata,
    sa.Column("n", sa.Integer, primary_key=True),
    sa.Column("big", sa.BigInteger, nullable=False),
    sa.Column("small", sa.SmallInteger, nullable=False),
    sa.Column("name", sa.String(40), nullable=False),
    sa.Column("code", sa.CHAR(6), nullable=False),
    sa.Column("uid", sa.Uuid, nullable=False),
    sa.Column("price", sa.Numeric(10, 2), nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("local_at", sa.DateTime, nullable=False),
    sa.Column("flag", sa.Boolean, nullable=False),
    sa.Column("colour", sa.Enum(Colour, name="keyed_colour"), nullable=False),
    sa.Column("doc", pg.JSONB, nullable=False),
    sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
)
typed_effects = sa.Table(
    "typed_effects", keyed_metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("job", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),  # repr of what perform received
)


class TypedJob(ReconciledJob):
    """Base: keyed by the columns named in ``key_columns``; perform records its key."""

    abstract = True
    every = 3600
    queue = "typed"
    retry = 0
    key_columns: ClassVar[tuple[str, ...]] = ()
    received: ClassVar[list[tuple[Any, ...]]] = []

    def pending(self) -> Select[Any]:
        cols = [typed_rows.c[name] for name in self.key_columns]
        return sa.select(*cols).where(typed_rows.c.done.is_(False))

    def perform(self, session: Session, *key: Any) -> None:  # type: ignore[override]
        type(self).received.append(key)
        session.execute(typed_effects.insert().values(job=type(self).__name__, key=repr(key)))
        cond = [typed_rows.c[name] == value for name, value in zip(self.key_columns, key, strict=True)]
        session.execute(typed_rows.update().where(*cond).values(done=True))


def _typed(column: str, *more: str) -> type[TypedJob]:
    cls = type(f"By_{'_'.join((column, *more))}", (TypedJob,), {
        "key_columns": (column, *more), "received": [], "__module__": __name__,
    })
    return cls  # type: ignore[return-value]


TYPED_JOBS = {c: _typed(c) for c in (
    "n", "big", "small", "name", "code", "uid", "price", "day", "at", "local_at", "flag", "colour", "doc")}
BY_N_NAME = _typed("n", "name")


ships = sa.Table(
    "keyed_ships", keyed_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("shipped", sa.Boolean, nullable=False, server_default=sa.false()),
)
ship_effects = sa.Table(
    "keyed_ship_effects", keyed_metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("ship_id", sa.Integer, nullable=False),
    sa.Column("arg", sa.Text, nullable=False),  # repr of the argument perform received
)


class SlowShip(ReconciledJob):
    """Ships an order, holding its transaction 50 ms: deliveries of one row overlap."""

    every = 3600
    queue = "ships"
    retry = 3

    def pending(self) -> Select[Any]:
        return sa.select(ships.c.id).where(ships.c.shipped.is_(False))

    def perform(self, session: Session, order_id: Any) -> None:  # type: ignore[override]
        session.execute(ship_effects.insert().values(ship_id=order_id, arg=repr(order_id)))
        time.sleep(0.05)
        session.execute(ships.update().where(ships.c.id == order_id).values(shipped=True))
