"""Enqueue when a SQLAlchemy Session's transaction commits (Django's ``on_commit``).

``HardWork.perform_after_commit(session, *args)`` keeps the job with the session and
enqueues it right after the session's outermost transaction commits, so a worker can
never pick it up before the rows it reads are visible (the classic "object does not
exist" race of enqueueing inside a transaction). Contracts:

* the arguments and their count are checked at the call (``ArgumentError`` names the
  bad one, or the parameters ``perform`` expects), not at commit;
* a rollback drops the job; so does a rolled-back savepoint (``begin_nested()``) the
  job was registered in, and a session closed without committing. A committed
  savepoint keeps its jobs until the outermost commit;
* called before the session's transaction has begun (SQLAlchemy begins it on the
  session's next statement), the job waits for that transaction's commit all the
  same: a Session always works inside a transaction, unlike Django's autocommit;
* jobs are enqueued in the order they were registered, consecutive ones of the same
  class and options in one call (one Redis round trip per 1,000);
* an enqueue that fails after the commit (Redis unreachable) cannot undo the commit:
  it is logged at ERROR by ``reconcile.after_commit`` with the class and arguments,
  and ``commit()`` returns normally. Work that must not be lost this way belongs in a
  :class:`~reconcile.ReconciledJob`, whose next pass finds it in the committed rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from .client import enqueue
from .jobclass import JobClass
from .logs import safe
from .payload import check_args

log = logging.getLogger("reconcile.after_commit")

_KEY = "reconcile.after_commit"


@dataclass
class _Deferred:
    job_class: JobClass
    options: dict[str, Any]
    at: float
    delay: float  # counted from the enqueue after the commit, on Redis's clock
    transaction: SessionTransaction | None
    args: list[tuple[Any, ...]] = field(default_factory=list)


def defer(session: Session, job_class: JobClass, args: tuple[Any, ...],
          options: dict[str, Any] | None = None, at: float = 0.0, delay: float = 0.0) -> None:
    """Enqueue ``job_class(*args)`` when ``session`` commits (see the module docs)."""
    check_args(list(args), job_class.job_name, job_class.arg_names(), job_class.arity())
    opts = options or {}
    pending: list[_Deferred] | None = session.info.get(_KEY)
    if pending is None:
        pending = session.info[_KEY] = []
        event.listen(session, "after_commit", _on_commit)
        event.listen(session, "after_soft_rollback", _on_rollback)
        event.listen(session, "after_transaction_end", _on_end)
    # None before the transaction begins: such jobs belong to the outermost transaction
    current = session.get_nested_transaction() or session.get_transaction()
    last = pending[-1] if pending else None
    if (last is not None and last.job_class is job_class and last.options == opts
            and last.at == at and last.delay == delay and last.transaction is current):
        last.args.append(args)
    else:
        pending.append(_Deferred(job_class, opts, at, delay, current, [args]))


def _within(transaction: SessionTransaction | None, ended: SessionTransaction) -> bool:
    """Whether ``transaction`` is ``ended`` or one of its nested transactions."""
    while transaction is not None:
        if transaction is ended:
            return True
        transaction = transaction.parent
    return False


def _on_commit(session: Session) -> None:
    if session.get_nested_transaction() is not None:
        return  # a savepoint was released (SQLAlchemy signals it too): wait for the outermost
    pending: list[_Deferred] = session.info.get(_KEY) or []
    session.info[_KEY] = []
    for batch in pending:
        try:
            enqueue(batch.job_class, batch.args, options=batch.options, at=batch.at, delay=batch.delay)
        except Exception:
            log.exception("%d %s jobs could not be enqueued after the commit; arguments: %s",
                          len(batch.args), batch.job_class.job_name, safe(batch.args[:20]))


def _on_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    pending: list[_Deferred] = session.info.get(_KEY) or []
    session.info[_KEY] = [b for b in pending if not _within(b.transaction, previous_transaction)]


def _on_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        # the outermost transaction ended: after a commit its jobs are enqueued already;
        # after a rollback or close() whatever is left is dropped
        session.info[_KEY] = []
