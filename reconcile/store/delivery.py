"""The delivery transaction: what ``ReconciledJob._execute`` drives, in two implementations.

``_execute`` (:mod:`reconcile.reconciled`) is written once against :class:`DeliveryTx`:

1. and 2. ``begin(lock, timeout) -> (locked, pending)``: bound the transaction to the
   job's ``timeout``, take ``pg_try_advisory_xact_lock(lock)`` and, if it was granted,
   re-check the key under it;
3. ``perform`` runs in that transaction (``run_perform`` asks
   :meth:`DeliveryTx.server_in_transaction` whether perform ended it behind the
   Session's back);
4. and 5. ``finish() -> converged``: flush, re-check, and commit if the key is no
   longer pending; False leaves the transaction to be rolled back.

:class:`SessionDelivery` is the specification: each step one SQLAlchemy statement
through the delivery's Session, as the steps read. :class:`DriverDelivery` is the fast
path the worker runs by default: steps 1-2 and 4-5 in one simple query each on the
driver connection (:class:`~reconcile.store.driver_tx.DriverTx`), with the key check
compiled once per class (:mod:`reconcile.store.key_check`). Setting ``fast_paths =
false`` runs the reference; ``tests/integration/test_delivery_protocol.py`` runs the protocol's
scenarios over both and compares their effects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from . import _psycopg_private as pg_private
from . import pending as sql
from .driver_tx import DriverTx


class DeliveryTx(Protocol):
    """One ReconciledJob delivery's transaction (steps named in the module docstring).

    Made inside the delivery's ``with session.begin():``; a delivery that returns
    without :meth:`finish` (lock busy, already done) or raises leaves its end to that
    block (commit of nothing, or rollback)."""

    conn: Connection
    """The Session's connection, on which every step runs."""

    def backend(self) -> tuple[int, int | None]:
        """The server backend running the delivery's transaction, as (pid, transaction
        start or None): the watchdog terminates it to end a perform that overran its
        ``timeout`` (:func:`reconcile.store.pending.terminate_backend`). Called inside
        the transaction, after :meth:`begin`. Directly on PostgreSQL the pid libpq
        reports (no round trip). Behind a pooler libpq's pid is the pooler's own: in
        ``session`` mode the server pid read when the connection was made; in
        ``transaction`` mode one more round trip, ``pg_backend_pid()`` and the
        transaction's start (:data:`reconcile.store.pending.BACKEND_SQL`), so that only
        this transaction is ever ended on that server connection."""
        ...

    def begin(self, lock: int, timeout: float | None) -> tuple[bool, bool]:
        """Steps 1 and 2: (locked, still pending); pending is False when not locked."""
        ...

    def finish(self) -> bool:
        """Steps 4 and 5: whether the key converged (and the transaction committed)."""
        ...

    def server_in_transaction(self) -> bool:
        """Whether the server still has the delivery's transaction open (perform may
        have sent a raw COMMIT or ROLLBACK)."""
        ...


def _commit(session: Session) -> None:
    """Commit the delivery's transaction through the Session's transaction object (the
    ``with session.begin()`` block then finds it ended). ``Session.commit()`` is not
    used: it is the method a DeliverySession refuses to perform."""
    transaction = session.get_transaction()
    assert transaction is not None, "a delivery runs inside session.begin()"
    transaction.commit()


class SessionDelivery:
    """The reference delivery transaction: plain SQLAlchemy, one statement per step.

    ``still_pending`` answers steps 2 and 4 in the Session's transaction: the job's
    ``is_pending`` (by default ``pending()`` restricted to the key,
    :func:`reconcile.store.pending.still_pending`). Costs four to six statements per
    delivery (timeouts, lock, check, check, commit), each through SQLAlchemy's
    execution; :class:`DriverDelivery` must have the same effects."""

    __slots__ = ("conn", "pooler", "session", "still_pending")

    def __init__(self, session: Session, still_pending: Callable[[], bool], pooler: str = "none") -> None:
        self.session = session
        self.conn = session.connection()
        self.still_pending = still_pending
        self.pooler = pooler

    def backend(self) -> tuple[int, int | None]:
        if self.pooler == "transaction":
            return sql.backend(self.session)
        return sql.backend_pid(self.session), None  # the server's pid, pooler or not

    def begin(self, lock: int, timeout: float | None) -> tuple[bool, bool]:
        if timeout:
            sql.set_local_timeouts(self.session, timeout)
        if not sql.try_lock(self.session, lock):
            return False, False
        # a statement of its own, after the lock's: under READ COMMITTED it takes a new
        # snapshot, so it sees every commit of a transaction that held the lock before
        return True, self.still_pending()

    def finish(self) -> bool:
        self.session.flush()  # perform's ORM changes, so the re-check sees them
        if self.still_pending():
            return False
        _commit(self.session)
        return True

    def server_in_transaction(self) -> bool:
        driver: Any = self.conn.connection.driver_connection
        return pg_private.transaction_status(driver) in pg_private.IN_TRANSACTION


class DriverDelivery:
    """The fast delivery transaction: :class:`~reconcile.store.driver_tx.DriverTx`.

    ``compiled`` is the key check as SQL and parameters
    (:func:`reconcile.store.key_check.delivery_check`): steps 1 and 2 then go as one
    simple query, and steps 4 and 5 as another (the check as a failing cast before
    ``COMMIT``). Without it (a check only SQLAlchemy can run, or the class's own
    ``is_pending``) the lock still goes to the driver and ``still_pending`` answers
    steps 2 and 4. ``prepare``: the setting ``prepared_checks`` (false behind a pooler
    in transaction mode); ``pooler``: the engine's
    :func:`~reconcile.store.pooler.pooler_mode`."""

    __slots__ = ("compiled", "conn", "pooler", "session", "still_pending", "tx")

    def __init__(self, session: Session, prepare: bool, compiled: tuple[str, dict[str, Any]] | None,
                 still_pending: Callable[[], bool], pooler: str = "none") -> None:
        self.session = session
        self.tx = DriverTx(session, prepare=prepare)
        self.conn = self.tx.conn
        self.compiled = compiled
        self.still_pending = still_pending
        self.pooler = pooler

    def backend(self) -> tuple[int, int | None]:
        return self.tx.backend(self.pooler)

    def begin(self, lock: int, timeout: float | None) -> tuple[bool, bool]:
        locked, pending = self.tx.open_delivery(lock, self.compiled, timeout)
        if not locked:
            return False, False  # step 1 ended its transaction (the fallback's is empty)
        if pending is None:
            pending = self.still_pending()
        return True, pending

    def finish(self) -> bool:
        self.session.flush()
        if self.compiled is not None:
            # one round trip; the Session's own commit then finds the transaction ended
            # and sends nothing
            return self.tx.commit_if_converged(self.compiled)
        if self.still_pending():
            return False
        _commit(self.session)
        return True

    def server_in_transaction(self) -> bool:
        return pg_private.transaction_status(self.tx.cursor.connection) in pg_private.IN_TRANSACTION
