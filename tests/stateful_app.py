"""The app of the stateful (hypothesis) test: keys that become due, and due again.

``st_items`` holds one row per key with a generation: ``gen`` is bumped each time the
key becomes due (again), ``done_gen`` is the generation the job last completed. The
key is pending while ``done_gen < gen``. ``st_effects`` logs one row per completed
(key, generation), written inside the job's transaction, with no unique constraint:
a duplicate effect shows up as a second row. Attempts (calls of ``perform``) are
counted in memory, outside the transaction, so rolled-back and crashed attempts count.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from reconcile import ReconciledJob

stateful_metadata = sa.MetaData()
st_items = sa.Table(
    "st_items", stateful_metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("gen", sa.Integer, nullable=False, server_default=sa.text("1")),
    sa.Column("done_gen", sa.Integer, nullable=False, server_default=sa.text("0")),
)
st_effects = sa.Table(
    "st_effects", stateful_metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("item_id", sa.BigInteger, nullable=False),
    sa.Column("gen", sa.Integer, nullable=False),
)


class TransientError(Exception):
    """The first attempt of every third key fails with this (it is retried)."""


class SimulatedCrash(BaseException):
    """Raised inside ``perform`` to stand for the process dying mid-transaction.

    A BaseException, so the executor does not turn it into a retry: it propagates out
    of ``Executor.run`` like a kill would end the thread, the transaction rolls back,
    and the delivery stays leased until the reaper recovers it.
    """


class StatefulItem(ReconciledJob):
    """Completes the key's current generation: one effect row, ``done_gen = gen``."""

    every = 3600
    queue = "stateful"
    retry = 5
    attempts: ClassVar[Counter[tuple[int, int]]] = Counter()
    crash_next: ClassVar[bool] = False  # the next perform dies after writing its effect

    def pending(self) -> Select[Any]:
        return sa.select(st_items.c.id).where(st_items.c.done_gen < st_items.c.gen)

    def perform(self, session: Session, item_id: int) -> None:  # type: ignore[override]
        gen = int(session.execute(sa.select(st_items.c.gen).where(st_items.c.id == item_id)).scalar_one())
        StatefulItem.attempts[(item_id, gen)] += 1
        session.execute(st_effects.insert().values(item_id=item_id, gen=gen))
        if StatefulItem.crash_next:
            StatefulItem.crash_next = False
            raise SimulatedCrash(f"killed inside perform of {item_id} gen {gen}")
        if item_id % 3 == 0 and StatefulItem.attempts[(item_id, gen)] == 1:
            raise TransientError(f"first attempt of {item_id} gen {gen} fails")
        session.execute(st_items.update().where(st_items.c.id == item_id).values(done_gen=gen))
