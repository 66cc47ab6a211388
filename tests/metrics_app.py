"""The app of the metrics tests: orders to ship (a ReconciledJob with ``pending_since``),
one of which always fails, and plain jobs, one retried, one discarded.

Worker and scheduler subprocesses import it with ``--app tests.metrics_app``; the
classes carry explicit registry names (``metrics.*``) so both see the same names.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from reconcile import Job, ReconciledJob

app_metadata = sa.MetaData()
orders = sa.Table(
    "metric_orders", app_metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("shipped", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("broken", sa.Boolean, nullable=False, server_default=sa.false()),
)
# the index docs/metrics.md asks for: the lag query reads one entry of it
sa.Index("ix_metric_orders_pending_since", orders.c.created_at,
         postgresql_where=orders.c.shipped.is_(False))


class ShipOrder(ReconciledJob):
    """Ships an order; a broken one raises and, with no retry, dies (and is quarantined)."""

    name = "metrics.ShipOrder"
    every = 1
    queue = "metrics"
    retry = 0
    pending_since = "created_at"

    def pending(self) -> Select[Any]:
        return sa.select(orders.c.id).where(orders.c.shipped.is_(False))

    def perform(self, session: Session, order_id: int) -> None:  # type: ignore[override]
        broken = session.execute(sa.select(orders.c.broken).where(orders.c.id == order_id)).scalar_one()
        if broken:
            raise RuntimeError(f"order {order_id} cannot be shipped")
        session.execute(orders.update().where(orders.c.id == order_id).values(shipped=True))


class CountOrders(ReconciledJob):
    """The same pending keys without ``pending_since``: it exports no lag sample. Its
    kill switch is off in the tests, so its passes only record the backlog."""

    name = "metrics.CountOrders"
    every = 3600
    queue = "metrics-idle"

    def pending(self) -> Select[Any]:
        return sa.select(orders.c.id).where(orders.c.shipped.is_(False))

    def perform(self, session: Session, order_id: int) -> None:  # type: ignore[override]
        pass


class Noop(Job):
    name = "metrics.Noop"
    queue = "metrics"

    def perform(self, n: int) -> None:
        pass


class Flaky(Job):
    """Always fails; retried once (outcome ``retry``), then dead."""

    name = "metrics.Flaky"
    queue = "metrics"
    retry = 1

    def retry_in(self, count: int, exc: BaseException) -> float:
        return 0.0

    def perform(self, n: int) -> None:
        raise ValueError(f"flaky {n}")


class Discarded(Job):
    """Fails with an exception the class discards (outcome ``discarded``)."""

    name = "metrics.Discarded"
    queue = "metrics"
    discard_on = (KeyError,)

    def perform(self, n: int) -> None:
        raise KeyError(n)
