"""The shop's background jobs. Run them with ``--app reconcile.examples.shop.jobs``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from reconcile import ReconciledJob, get_settings
from reconcile.store.engine import get_engine

from . import mailer
from .models import Invoice, Order, Shipment


class ShipOrder(ReconciledJob):
    """Ship every paid order exactly once."""

    every = 10
    jitter = 2
    queue = "default"

    def pending(self) -> Select[Any]:
        return select(Order.id).where(Order.paid_at.is_not(None), Order.shipped_at.is_(None))

    def perform(self, session: Session, order_id: int) -> None:
        order = session.get(Order, order_id)
        assert order is not None
        session.add(Shipment(order_id=order_id))
        order.shipped_at = func.now()  # the effect makes the key stop being pending


class SendInvoice(ReconciledJob):
    """E-mail every finalized invoice, through an external API with an idempotency key."""

    every = 10
    jitter = 2
    queue = "mailers"

    def pending(self) -> Select[Any]:
        return select(Invoice.id).where(Invoice.finalized, Invoice.sent_at.is_(None))

    def perform(self, session: Session, invoice_id: int) -> None:
        mailer.send_invoice(get_engine(get_settings()), invoice_id, self.idempotency_key)
        invoice = session.get(Invoice, invoice_id)
        assert invoice is not None
        invoice.sent_at = func.now()
