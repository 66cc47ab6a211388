"""The shop's tables (its own, not reconcile's)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String, func, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "shop_orders"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    customer: Mapped[str] = mapped_column(String(100))
    paid_at: Mapped[datetime | None]
    shipped_at: Mapped[datetime | None]
    # The pending query's index: "paid and not shipped", in key order.
    __table_args__ = (
        Index("shop_orders_to_ship", "id",
              postgresql_where=text("paid_at IS NOT NULL AND shipped_at IS NULL")),
    )


class Shipment(Base):
    """Effect log written inside the job's transaction. No unique constraint on
    purpose: a duplicate effect would show up here as a second row."""

    __tablename__ = "shop_shipments"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("shop_orders.id"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Invoice(Base):
    __tablename__ = "shop_invoices"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    email: Mapped[str] = mapped_column(String(200))
    finalized: Mapped[bool] = mapped_column(default=False)
    sent_at: Mapped[datetime | None]
    __table_args__ = (
        Index("shop_invoices_to_send", "id",
              postgresql_where=text("finalized AND sent_at IS NULL")),
    )


class MailOutbox(Base):
    """What the 'external' mail provider accepted, keyed by idempotency key, plus how
    many times it was asked (a retried request with the same key is not re-sent)."""

    __tablename__ = "shop_mail_outbox"
    idempotency_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    invoice_id: Mapped[int] = mapped_column(BigInteger)
    requests: Mapped[int] = mapped_column(default=1)
