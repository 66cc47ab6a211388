"""What happens to a job whose perform raised (Sidekiq's job_retry semantics).

Decision order for a failure ``exc`` of a job whose payload says ``retry``:

1. ``exc`` is one of the class's ``discard_on`` types: discard (no retry, not dead).
2. ``retry`` is ``False``: discard.
3. Record the failure in the payload: ``error_class``, ``error_message``, the
   traceback as the class's ``backtrace`` option allows (``error_backtrace``, see
   :func:`backtrace_text`), and either ``failed_at`` with ``retry_count = 0`` (first
   failure) or ``retried_at`` with ``retry_count + 1``.
4. ``retry_count < max`` (``max`` = ``default_retry`` for ``True``, else the int):
   ask ``retry_in(count, exc)``: ``DISCARD`` drops it, ``KILL`` kills it, a number is
   the delay (0 or less: at once), ``None`` (or a hook that raises, or returns
   ``nan``/``inf``, which no clock can add) means the default
   ``count**4 + 15 + rand(10) * (count + 1)`` seconds. Schedule in the retry set: the
   verdict carries the delay, which ``fetch.lua`` adds to the Redis server's clock (a
   worker whose clock is off still retries on time; the payload's ``failed_at`` and
   ``retried_at`` are this host's clock, for display).
5. Otherwise the retries are exhausted: call ``retries_exhausted(payload, exc)`` and
   every global death handler, then the job goes to the dead set. ``retry = 0`` lands
   here on the first failure.
"""

from __future__ import annotations

import logging
import math
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..job import DISCARD, KILL

if TYPE_CHECKING:
    from ..job import Job

log = logging.getLogger("reconcile.worker")

MAX_ERROR_MESSAGE = 2000

BACKTRACE_FRAMES = 20
"""Frames kept by ``backtrace = True``: the ones nearest the error (a job's own code and
what it called), not the worker's frames that led to ``perform``."""

MAX_BACKTRACE_BYTES = 8000
"""Longest ``error_backtrace`` kept, in UTF-8 bytes: a retry set of 10,000 failing jobs
then holds at most 80 MB of tracebacks. Longer text keeps its end (the error)."""

DeathHandler = Callable[[dict[str, Any], BaseException], None]
death_handlers: list[DeathHandler] = []
"""Called with (payload, exception) for every job that dies, after ``retries_exhausted``."""


def default_delay(count: int) -> float:
    """Sidekiq's backoff for retry number ``count`` (0-based): ``count**4 + 15 + rand(10)*(count+1)``."""
    return float(count**4 + 15 + random.randrange(10) * (count + 1))


@dataclass(frozen=True)
class Verdict:
    """``kind`` is ``"discard"``, ``"retry"`` (with ``delay``, seconds) or ``"dead"``."""

    kind: str
    delay: float = 0.0


def error_name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def backtrace_text(exc: BaseException, frames: bool | int) -> str | None:
    """``exc``'s traceback as Python prints it, with at most ``frames`` frames (the
    innermost; ``True``: :data:`BACKTRACE_FRAMES`), chained causes included, capped at
    :data:`MAX_BACKTRACE_BYTES` by dropping its beginning. None for ``False`` or 0."""
    limit = BACKTRACE_FRAMES if frames is True else int(frames)
    if limit <= 0:
        return None
    # a negative limit keeps the last frames: the ones nearest the error
    text = "".join(traceback.format_exception(exc, limit=-limit))
    raw = text.encode("utf-8", "replace")
    if len(raw) > MAX_BACKTRACE_BYTES:
        text = "...\n" + raw[-MAX_BACKTRACE_BYTES:].decode("utf-8", "ignore")
    return text


def record_failure(payload: dict[str, Any], exc: BaseException, now: float,
                   backtrace: bool | int = False) -> int:
    """Stamp the failure on ``payload`` and return its retry count (0 on first failure).
    ``backtrace`` is the class option: how many frames ``error_backtrace`` keeps."""
    payload["error_class"] = error_name(exc)
    payload["error_message"] = str(exc)[:MAX_ERROR_MESSAGE]
    text = backtrace_text(exc, backtrace)
    if text is None:
        payload.pop("error_backtrace", None)  # an earlier attempt's must not outlive it
    else:
        payload["error_backtrace"] = text
    if "retry_count" in payload:
        payload["retried_at"] = now
        payload["retry_count"] = int(payload["retry_count"]) + 1
    else:
        payload["failed_at"] = now
        payload["retry_count"] = 0
    return int(payload["retry_count"])


def decide(
    job_class: type[Job], job: Job | None, payload: dict[str, Any], exc: BaseException,
    default_retry: int,
) -> Verdict:
    """Apply the rules above; mutates ``payload`` with the failure fields."""
    if job_class.discard_on and isinstance(exc, job_class.discard_on):
        return Verdict("discard")
    retry = payload.get("retry", job_class.retry)
    if retry is False:
        return Verdict("discard")
    limit = default_retry if retry is True else int(retry)
    now = time.time()
    count = record_failure(payload, exc, now, job_class.backtrace)
    if count < limit:
        decision: Any = None
        if job is not None:
            try:
                decision = job.retry_in(count, exc)
            except Exception:
                log.exception("%s.retry_in raised; using the default backoff", job_class.__name__)
        if decision is DISCARD:
            return Verdict("discard")
        if decision is not KILL:
            delay = default_delay(count) if decision is None else float(decision)
            if not math.isfinite(delay):
                # fetch.lua adds the delay to the Redis clock: inf or nan would fail the
                # whole settlement call, and with it the jobs settled beside this one
                log.error("%s.retry_in returned %r, not a finite delay; using the default backoff",
                          job_class.__name__, decision)
                delay = default_delay(count)
            return Verdict("retry", delay)
    run_death_hooks(job_class, payload, exc)
    return Verdict("dead")


def run_death_hooks(job_class: type[Job], payload: dict[str, Any], exc: BaseException) -> None:
    """``retries_exhausted`` then global death handlers; a raising hook is logged, not fatal."""
    try:
        job_class.retries_exhausted(payload, exc)
    except Exception:
        log.exception("%s.retries_exhausted raised", job_class.__name__)
    for handler in list(death_handlers):
        try:
            handler(payload, exc)
        except Exception:
            log.exception("death handler %r raised", handler)
