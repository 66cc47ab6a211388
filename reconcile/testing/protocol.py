"""Test helpers that drive the real ReconciledJob protocol against a real database.

* :func:`assert_idempotent` runs two deliveries of one key through the five-step
  protocol (lock, re-check, perform, re-check, commit), as a worker would, and fails
  with a message naming the step when the first does not converge or the second
  performs again;
* :func:`run_pass` is the reconcile pass the scheduler runs
  (:func:`reconcile.scheduler.passes.run_pass`), for tests that enqueue a class's
  pending keys;
* :func:`create_tables` creates (migrates) the framework's tables in a test database,
  so a fixture need not shell out to ``reconcile db upgrade``.

They use the process settings (``reconcile.configure``) unless given others: the
database of ``database_url``, the Redis of ``redis_url`` for :func:`run_pass`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import Settings, use_settings
from ..errors import NotConverged
from ..outcome import Outcome
from ..payload import new_jid
from ..scheduler.passes import PassResult
from ..scheduler.passes import run_pass as _run_pass
from ..store import migrate

if TYPE_CHECKING:
    from ..reconciled import ReconciledJob

__all__ = ["assert_idempotent", "create_tables", "run_pass"]


def _deliver(job_class: type[ReconciledJob], args: list[Any]) -> tuple[Outcome, int]:
    """One delivery of ``args`` (canonical) through the protocol; (outcome, performs)."""
    job = job_class()
    job.jid = new_jid()
    job.payload = {"class": job_class.job_name, "queue": job_class.queue, "jid": job.jid, "args": args}
    calls = 0
    perform: Callable[..., Any] = job.perform

    def counted(*a: Any) -> Any:
        nonlocal calls
        calls += 1
        return perform(*a)

    job.perform = counted  # type: ignore[method-assign, assignment]  # this instance only
    return job.execute(args), calls


def assert_idempotent(job_class: type[ReconciledJob], *key: Any, settings: Settings | None = None) -> None:
    """Deliver ``key`` of ``job_class`` twice, as two workers would one after the other,
    and raise ``AssertionError`` unless the first performs and converges and the second
    finds the key done and does not perform.

    The key must be pending when called (set up the rows first); the first delivery
    commits like a real one. What this proves: ``perform`` makes the key stop being
    pending (``pending()`` / ``is_pending`` agree with what it writes), so a duplicate
    delivery has no second effect inside the database. An effect outside it (an e-mail,
    an API call) is not seen here: give it :meth:`ReconciledJob.idempotency_key`.
    """
    if settings is not None:
        use_settings(settings)
    name = job_class.job_name
    args = job_class.canonical_args(list(key))
    try:
        first, performs = _deliver(job_class, args)
    except NotConverged as exc:
        raise AssertionError(
            f"{name}{tuple(key)!r} did not converge: perform returned but the key is still "
            f"pending, so every delivery would perform again ({exc})") from None
    if first is Outcome.ALREADY_DONE:
        raise AssertionError(f"{name}{tuple(key)!r} was not pending: set up a pending row first")
    if first is not Outcome.DONE or performs != 1:
        raise AssertionError(f"{name}{tuple(key)!r}: the first delivery came to {first.value} "
                             f"with {performs} performs, not done with 1")
    second, performs = _deliver(job_class, args)
    if second is not Outcome.ALREADY_DONE or performs:
        raise AssertionError(
            f"{name}{tuple(key)!r}: a second delivery came to {second.value} with {performs} "
            "performs; after the first committed it must find the key done (already_done) "
            "and not perform")


def run_pass(job_class: type[ReconciledJob], *, settings: Settings | None = None) -> PassResult:
    """One reconcile pass of ``job_class`` now (trigger ``manual``): its pending keys
    enqueued, the run recorded; returns the counts."""
    return _run_pass(job_class, trigger="manual", owner="test", settings=settings)


def create_tables(database_url: str) -> None:
    """Create or upgrade the framework's tables at ``database_url`` (a SQLAlchemy URL;
    ``?options=-csearch_path%3Dschema`` puts them in a schema), as ``reconcile db
    upgrade`` does. Idempotent and safe from several processes at once."""
    migrate.upgrade(database_url)
