"""Settlements: how a finished (or handed back) delivery leaves its lease.

A :class:`SettleOp` is built by a named constructor (``SettleOp.ack(field, lock)``,
``SettleOp.retry(...)``, ...) and read by its :attr:`~SettleOp.kind` and named
properties; the one-letter codes ``fetch.lua`` reads (A/X/R/S/D/Q) are the values of
:class:`SettleKind` and stay inside ``broker/``: :meth:`Broker.exchange` sends
``op.kind``'s code and the positional ``a, b, c`` as the script's header lists them.

=============  ====  ====================================================  ============
kind           code  effect in ``fetch.lua``                                a, b, c
=============  ====  ====================================================  ============
``ack``        A     lease removed, ``processed`` counted, lock released    lock, jid
``drop``       X     lease removed, lock released (already done, void)      lock, jid
``retry``      R     into the retry set ``delay`` s on, ``failed`` counted  delay, payload, lock
``reschedule`` S     into the scheduled set ``delay`` s on (no retry spent) delay, payload
``dead``       D     into the dead set (capped), ``failed`` counted         record, lock
``push_back``  Q     back to the head of ``queue``, unchanged               queue, raw
=============  ====  ====================================================  ============

Retries and re-schedules carry a *delay*, never an absolute time: ``fetch.lua`` adds it
to the Redis server's clock (``TIME``), so a worker whose clock is fast or slow still
retries on time (one clock for every run-at, see ``lua/prelude.lua``).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, NamedTuple


class SettleKind(Enum):
    """The settlement kinds; each value is the code ``fetch.lua`` reads. A plain
    ``Enum``, not a ``str`` one, so that no caller outside ``broker/`` can compare a
    kind with its letter."""

    ACK = "A"
    DROP = "X"
    RETRY = "R"
    RESCHEDULE = "S"
    DEAD = "D"
    PUSH_BACK = "Q"


class SettleOp(NamedTuple):
    """One settlement for the lease ``field``; build it with the named constructors."""

    kind: SettleKind
    field: bytes
    a: Any = ""
    b: Any = ""
    c: Any = ""

    # -- constructors ----------------------------------------------------------------

    @classmethod
    def ack(cls, field: bytes, lock: str = "", jid: str = "") -> SettleOp:
        """Performed: counted ``processed``; ``lock`` (a uniqueness lock) is released;
        the job's ``jid`` leaves the jid index ("": ``fetch.lua`` reads it from the
        lease, one more command)."""
        return cls(SettleKind.ACK, field, lock, jid)

    @classmethod
    def drop(cls, field: bytes, lock: str = "", jid: str = "") -> SettleOp:
        """Ends the lease with no other effect (already done, disabled, discarded, or a
        late result of a delivery the watchdog settled); ``lock`` is released, ``jid``
        leaves the jid index (as for :meth:`ack`)."""
        return cls(SettleKind.DROP, field, lock, jid)

    @classmethod
    def retry(cls, field: bytes, delay: float, payload: bytes, lock: str = "") -> SettleOp:
        """Failed, retried ``delay`` seconds from now on the Redis server's clock (a
        negative delay counts as 0) with ``payload`` (its retry count stamped); counted
        ``failed``."""
        return cls(SettleKind.RETRY, field, repr(delay), payload, lock)

    @classmethod
    def reschedule(cls, field: bytes, delay: float, payload: bytes) -> SettleOp:
        """Runs again ``delay`` seconds from now on the Redis server's clock, without
        spending a retry (lock busy, database lost, held); the uniqueness lock is kept."""
        return cls(SettleKind.RESCHEDULE, field, repr(delay), payload)

    @classmethod
    def dead(cls, field: bytes, record: bytes, lock: str = "") -> SettleOp:
        """Into the dead set with ``record`` (the payload with its error fields)."""
        return cls(SettleKind.DEAD, field, record, lock)

    @classmethod
    def push_back(cls, field: bytes, queue: str, raw: bytes) -> SettleOp:
        """Not run: back to the head of ``queue`` unchanged (shutdown, isolation)."""
        return cls(SettleKind.PUSH_BACK, field, queue, raw)

    # -- named fields ----------------------------------------------------------------

    @property
    def lock(self) -> str:
        """The uniqueness lock the settlement releases ("" for none)."""
        if self.kind in (SettleKind.ACK, SettleKind.DROP):
            return str(self.a)
        if self.kind is SettleKind.RETRY:
            return str(self.c)
        if self.kind is SettleKind.DEAD:
            return str(self.b)
        return ""

    @property
    def delay(self) -> float | None:
        """Seconds until a retried or re-scheduled job runs again, counted from the
        moment ``fetch.lua`` applies the settlement, on the Redis server's clock."""
        if self.kind in (SettleKind.RETRY, SettleKind.RESCHEDULE):
            return float(self.a)
        return None

    @property
    def payload(self) -> bytes | None:
        """The bytes the settlement writes back: the retried or re-scheduled payload,
        the dead record, or the pushed-back raw payload."""
        if self.kind in (SettleKind.RETRY, SettleKind.RESCHEDULE, SettleKind.PUSH_BACK):
            return self.b  # type: ignore[no-any-return]
        if self.kind is SettleKind.DEAD:
            return self.a  # type: ignore[no-any-return]
        return None

    @property
    def queue(self) -> str | None:
        """The queue a pushed-back job returns to."""
        return str(self.a) if self.kind is SettleKind.PUSH_BACK else None
