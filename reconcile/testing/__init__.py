"""Test modes for applications, in the manner of ``Sidekiq::Testing``.

Two modes replace Redis on the enqueue path (through
:func:`reconcile.client.set_interceptor`), for application tests that should not
need a worker:

* **fake**: enqueued jobs are collected per class; the test inspects them and runs
  them when it wants to::

      from reconcile.testing import fake

      with fake() as jobs:
          signup(user)                               # calls WelcomeMail.perform_async(...)
          assert jobs.args_for(WelcomeMail) == [[user.id]]
          jobs.drain(WelcomeMail)                    # runs it (and any it enqueues)

* **inline**: ``perform`` runs at once, inside the enqueue call::

      with inline():
          WelcomeMail.perform_async(user.id)         # has run when this returns

In both modes every payload makes the same JSON round trip as on the way to Redis:
arguments that are not JSON-native raise :class:`~reconcile.errors.ArgumentError` at
enqueue, a payload over ``max_payload_bytes`` raises
:class:`~reconcile.errors.PayloadTooLarge`, and ``perform`` sees the decoded
payload, exactly what a worker would see. Client middleware runs as in
production (a rejected job is not collected and its enqueue returns ``None``).

Differences from a real worker, on purpose:

* a job that raises propagates its exception to the caller of ``drain`` (or of the
  enqueue, inline); there are no retries, no dead set. Unless the fake mode is made
  with ``retries=True``: then a failure is settled by the worker's own retry rules
  (the class's ``retry``, ``retry_in``, ``discard_on``, ``retries_exhausted``, death
  handlers), a retried job is collected again at once (``retry_count`` and the error
  stamped, its backoff not waited for) and runs again in the same ``drain``, and a
  job out of retries lands in ``jobs.dead`` and dies as in a worker: a ReconciledJob's
  key is quarantined in the database, so "quarantined after N failures" is testable::

      with fake(retries=True) as jobs:
          ShipOrder.perform_async(order.id)          # ShipOrder.retry = 2, perform raises
          jobs.drain(ShipOrder)                      # 3 attempts, no exception
          assert [p["retry_count"] for p in jobs.dead] == [2]
          assert ShipOrder.status(order.id)["verdict"] == "quarantined"

* scheduled jobs (``perform_in``, ``perform_at``, ``set(wait=...)``) are collected with
  their ``at`` field and run on ``drain`` regardless of time (inline: at once);
* uniqueness locks are not taken (every enqueue is collected);
* server middleware is not run unless the mode is created with
  ``server_middleware=True``.

For ReconciledJobs against a real database, :mod:`reconcile.testing.protocol` adds
``assert_idempotent(JobClass, *key)`` (two deliveries through the real protocol: the
first must converge, the second must not perform), ``run_pass(JobClass)`` and
``create_tables(url)``, importable from here too.

Modes nest: leaving a ``with`` block restores the mode that was active before it.
The pytest plugin (``reconcile.testing.pytest_plugin``, registered as an entry point)
provides the fixtures ``reconcile_fake`` and ``reconcile_inline``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .. import middleware, registry
from ..client import Interceptor, set_interceptor
from ..config import get_settings
from ..payload import decode, encode

if TYPE_CHECKING:
    from ..job import Job

__all__ = ["FakeMode", "InlineMode", "assert_idempotent", "create_tables", "fake", "inline", "run_pass"]

_PROTOCOL_HELPERS = frozenset({"assert_idempotent", "create_tables", "run_pass"})


def __getattr__(name: str) -> Any:
    # The protocol helpers (reconcile.testing.protocol) are imported on first use: they
    # pull in the scheduler and the PostgreSQL driver, which the pytest plugin, loaded
    # into every test session of an app, must not.
    if name in _PROTOCOL_HELPERS:
        from . import protocol

        return getattr(protocol, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

Payload = dict[str, Any]

DRAIN_LIMIT = 100_000
"""Most jobs one ``drain``/``drain_all`` call runs before it assumes a job that
enqueues itself forever and raises :class:`RuntimeError`."""


def _round_trip(payloads: list[Payload]) -> list[Payload]:
    """Encode then decode each payload, as the trip through Redis does.

    Every payload is encoded before any is returned, so a bulk enqueue with one
    oversized payload records nothing.
    """
    limit = get_settings().max_payload_bytes
    encoded = [encode(p, limit) for p in payloads]
    return [decode(raw, limit) for raw in encoded]


def _perform(payload: Payload, with_middleware: bool) -> None:
    """Run one job from its payload, in this thread; exceptions propagate."""
    cls = registry.resolve(payload["class"])
    job = cls()
    job.jid = payload["jid"]
    job.payload = payload
    args: list[Any] = payload["args"]

    def perform() -> None:
        job.execute(args)

    chain = middleware.server_middleware.items if with_middleware else ()
    if chain:
        middleware.run_server(chain, job, payload, perform)
    else:
        perform()


class _Mode:
    """Install/uninstall as the client interceptor; a context manager."""

    def __init__(self, *, server_middleware: bool = False) -> None:
        self.server_middleware = server_middleware
        self._previous: list[Interceptor | None] = []

    def intercept(self, job_class: type[Job], payloads: list[Payload]) -> None:
        raise NotImplementedError

    def install(self) -> None:
        self._previous.append(set_interceptor(self))

    def uninstall(self) -> None:
        set_interceptor(self._previous.pop() if self._previous else None)

    def __enter__(self) -> Any:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()


class FakeMode(_Mode):
    """Collects enqueued jobs instead of pushing them to Redis.

    Jobs are kept in enqueue order, per class (by registry name). Thread-safe: jobs
    enqueued from other threads while the mode is active are collected too.
    """

    def __init__(self, *, server_middleware: bool = False, retries: bool = False) -> None:
        super().__init__(server_middleware=server_middleware)
        self.retries = retries
        self._lock = threading.RLock()
        self._jobs: deque[Payload] = deque()
        self.dead: list[Payload] = []
        """Jobs that died (``retries=True``): their payloads, error fields stamped."""
        self.discarded: list[Payload] = []
        """Jobs a failure discarded (``retries=True``: ``retry = False``, ``discard_on``)."""

    # -- collection ------------------------------------------------------------------

    def intercept(self, job_class: type[Job], payloads: list[Payload]) -> None:
        decoded = _round_trip(payloads)
        with self._lock:
            self._jobs.extend(decoded)

    @property
    def jobs(self) -> list[Payload]:
        """Every collected job (payload dicts), oldest first."""
        with self._lock:
            return list(self._jobs)

    def jobs_for(self, job_class: type[Job] | str) -> list[Payload]:
        """Collected jobs of one class (a class or its registry name), oldest first."""
        name = _name(job_class)
        with self._lock:
            return [p for p in self._jobs if p["class"] == name]

    def args_for(self, job_class: type[Job] | str) -> list[list[Any]]:
        """The ``args`` of each collected job of one class, oldest first."""
        return [p["args"] for p in self.jobs_for(job_class)]

    def jobs_in(self, queue: str) -> list[Payload]:
        """Collected jobs bound for ``queue``, oldest first."""
        with self._lock:
            return [p for p in self._jobs if p["queue"] == queue]

    def __len__(self) -> int:
        return len(self._jobs)

    def clear(self, job_class: type[Job] | str | None = None) -> None:
        """Forget collected jobs: all of them, or those of one class."""
        with self._lock:
            if job_class is None:
                self._jobs.clear()
            else:
                name = _name(job_class)
                kept = [p for p in self._jobs if p["class"] != name]
                self._jobs.clear()
                self._jobs.extend(kept)

    # -- running ---------------------------------------------------------------------

    def _take(self, name: str | None) -> Payload | None:
        with self._lock:
            for i, p in enumerate(self._jobs):
                if name is None or p["class"] == name:
                    del self._jobs[i]
                    return p
        return None

    def perform_one(self, job_class: type[Job] | str | None = None) -> Payload | None:
        """Run the oldest collected job (of ``job_class`` if given); returns its payload,
        or None if there was none. The job is removed before it runs, so a job that
        raises is gone (its exception propagates)."""
        payload = self._take(None if job_class is None else _name(job_class))
        if payload is not None:
            self._run(payload)
        return payload

    def drain(self, job_class: type[Job] | str, *, limit: int = DRAIN_LIMIT) -> int:
        """Run collected jobs of ``job_class``, oldest first, until none is left,
        including those the running jobs enqueue. Returns how many ran.

        Jobs of other classes stay collected. A job that raises stops the drain and
        its exception propagates (the jobs after it stay collected).
        """
        name = _name(job_class)
        return self._drain(name, limit)

    def drain_all(self, *, limit: int = DRAIN_LIMIT) -> int:
        """Run every collected job, oldest first, until none is left, including those
        the running jobs enqueue. Returns how many ran."""
        return self._drain(None, limit)

    def _drain(self, name: str | None, limit: int) -> int:
        ran = 0
        while True:
            payload = self._take(name)
            if payload is None:
                return ran
            if ran >= limit:
                with self._lock:
                    self._jobs.appendleft(payload)
                raise RuntimeError(
                    f"drain ran {limit} jobs and more keep coming: a job that enqueues "
                    "itself without end?"
                )
            ran += 1
            self._run(payload)

    def _run(self, payload: Payload) -> None:
        """Run one job; with ``retries``, settle a failure as a worker would."""
        if not self.retries:
            _perform(payload, self.server_middleware)
            return
        try:
            _perform(payload, self.server_middleware)
        except Exception as exc:
            self._failed(payload, exc)

    def _failed(self, payload: Payload, exc: Exception) -> None:
        """The worker's retry rules (:func:`reconcile.worker.retry.decide`) on a fake
        job: collected again (retry), kept in :attr:`dead` after ``on_death`` (dead:
        a ReconciledJob's key is quarantined), or in :attr:`discarded`."""
        from ..worker.retry import decide  # deferred: the worker package is not needed otherwise

        cls = registry.resolve(payload["class"])
        try:
            job: Job | None = cls()
        except Exception:
            job = None
        verdict = decide(cls, job, payload, exc, get_settings().default_retry)
        if verdict.kind == "retry":
            payload["at"] = time.time() + (verdict.delay or 0.0)  # when a worker would run it
            with self._lock:
                self._jobs.append(payload)
        elif verdict.kind == "dead":
            cls.on_death(payload, exc)
            self.dead.append(payload)
        else:
            self.discarded.append(payload)


class InlineMode(_Mode):
    """Runs each job inside its enqueue call, after the JSON round trip.

    ``performed`` lists the payloads of the jobs run so far, in order.
    """

    def __init__(self, *, server_middleware: bool = False) -> None:
        super().__init__(server_middleware=server_middleware)
        self.performed: list[Payload] = []

    def intercept(self, job_class: type[Job], payloads: list[Payload]) -> None:
        for payload in _round_trip(payloads):
            self.performed.append(payload)
            _perform(payload, self.server_middleware)


def _name(job_class: type[Job] | str) -> str:
    return job_class if isinstance(job_class, str) else job_class.job_name


@contextmanager
def fake(*, server_middleware: bool = False, retries: bool = False) -> Iterator[FakeMode]:
    """Fake mode for the ``with`` block; yields the :class:`FakeMode`. ``retries``:
    settle failures by the retry rules instead of raising them (see the module docs)."""
    with FakeMode(server_middleware=server_middleware, retries=retries) as mode:
        yield mode


@contextmanager
def inline(*, server_middleware: bool = False) -> Iterator[InlineMode]:
    """Inline mode for the ``with`` block; yields the :class:`InlineMode`."""
    with InlineMode(server_middleware=server_middleware) as mode:
        yield mode
