"""A stand-in for an external e-mail API (think Postmark or SES behind HTTP).

It runs outside the job's transaction, like a real API call: if the job's transaction
later rolls back, the mail was still sent. What keeps the customer from getting two
mails is the provider honouring the idempotency key, which the job passes as
``self.idempotency_key`` (stable for the job class and key).
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.dialects.postgresql import insert

from .models import MailOutbox


def send_invoice(engine: Engine, invoice_id: int, idempotency_key: str) -> None:
    """'Send' the invoice mail: accepted once per idempotency key, counted each time."""
    stmt = insert(MailOutbox).values(idempotency_key=idempotency_key, invoice_id=invoice_id)
    stmt = stmt.on_conflict_do_update(
        index_elements=[MailOutbox.idempotency_key],
        set_={"requests": MailOutbox.requests + 1},
    )
    with engine.begin() as conn:  # its own connection: the provider is not in our transaction
        conn.execute(stmt)
