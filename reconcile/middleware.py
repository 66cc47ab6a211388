"""Client and server middleware chains.

Client middleware runs at enqueue, once per job, before anything is written::

    def stamp_tenant(job_class, payload, call_next):
        payload["tenant"] = current_tenant()
        return call_next(payload)          # return None instead to reject the enqueue

A rejected enqueue returns ``None`` to the caller and writes nothing to Redis.

Server middleware wraps ``perform`` in the worker::

    def timed(job, payload, call_next):
        started = time.monotonic()
        try:
            call_next()                    # not calling it skips the job (acked, not retried)
        finally:
            metrics.timing(payload["class"], time.monotonic() - started)

An exception raised by server middleware is a job failure and follows the retry rules.
Chains are process-wide; configure them at import time of the app module.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .jobclass import JobClass

Payload = dict[str, Any]
# The first parameter is the job class (client) or the job instance (server), typed Any
# because parameter types are contravariant: a middleware annotated with the natural
# ``type[Job]`` or ``Job`` must be accepted, and this module cannot name Job (job.py
# imports it).
ClientMiddleware = Callable[[Any, Payload, Callable[[Payload], Payload | None]], Payload | None]
ServerMiddleware = Callable[[Any, Payload, Callable[[], None]], None]

M = TypeVar("M")


class Chain(Generic[M]):
    """An ordered, thread-safe list of middleware; the first added runs outermost."""

    def __init__(self) -> None:
        self._items: tuple[M, ...] = ()
        self._lock = threading.Lock()

    def add(self, middleware: M) -> M:
        """Append ``middleware`` (innermost so far). Returns it, so it works as a decorator."""
        with self._lock:
            self._items = (*self._items, middleware)
        return middleware

    def prepend(self, middleware: M) -> M:
        """Insert ``middleware`` so it runs first (outermost)."""
        with self._lock:
            self._items = (middleware, *self._items)
        return middleware

    def remove(self, middleware: M) -> None:
        with self._lock:
            self._items = tuple(m for m in self._items if m is not middleware)

    def clear(self) -> None:
        with self._lock:
            self._items = ()

    def __iter__(self) -> Iterator[M]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def items(self) -> tuple[M, ...]:
        """Immutable snapshot (cheap: replaced on change, never mutated)."""
        return self._items


client_middleware: Chain[ClientMiddleware] = Chain()
"""Runs at enqueue; may mutate the payload or reject the job."""

server_middleware: Chain[ServerMiddleware] = Chain()
"""Wraps perform in the worker; may skip, retry (raise), log or time."""


def run_client(
    chain: tuple[ClientMiddleware, ...], job_class: JobClass, payload: Payload
) -> Payload | None:
    """Pass ``payload`` through ``chain``; ``None`` if a middleware rejected it."""

    def step(i: int, current: Payload) -> Payload | None:
        if i == len(chain):
            return current
        return chain[i](job_class, current, lambda p: step(i + 1, p))

    return step(0, payload)


def run_server(
    chain: tuple[ServerMiddleware, ...], job: Any, payload: Payload, perform: Callable[[], None]
) -> bool:
    """Run ``perform`` inside ``chain``; False if a middleware skipped it."""
    ran = False

    def step(i: int) -> None:
        nonlocal ran
        if i == len(chain):
            ran = True
            perform()
            return
        chain[i](job, payload, lambda: step(i + 1))

    step(0)
    return ran
