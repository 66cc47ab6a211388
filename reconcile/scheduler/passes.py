"""One reconcile pass: re-derive a ReconciledJob's pending keys and enqueue them.

``run_pass(job_class, trigger=...)``:

1. record the start in ``reconcile_runs``;
2. a disabled class (kill switch) enqueues nothing: the run is recorded as disabled;
3. scan ``pending()`` in keyset pages of ``batch_size`` keys, each page in its own
   short transaction (no long snapshot: rows that change during the pass are seen
   as they are when their page is read);
4. drop quarantined keys (read once per pass);
5. enqueue each page with one Lua call that takes each key's uniqueness lock and
   gives each key a run-at spread uniformly over ``jitter`` seconds; a held lock
   means the key is already queued (or waiting for a retry, whose backoff is kept),
   except in a pass triggered by a Redis loss, which first drops the page's locks
   (a lock that survived an eviction proves nothing about its job);
6. record found / enqueued / already queued / quarantined and the duration.

Passes are idempotent and level-triggered: running one twice, or concurrently with a
worker draining the same keys, enqueues nothing twice that matters.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..broker import get_broker
from ..client import enqueue
from ..config import Settings, get_settings
from ..errors import ArgumentError
from ..payload import check_args

if TYPE_CHECKING:
    from ..reconciled import ReconciledJob

log = logging.getLogger("reconcile.scheduler")

KEEPALIVE_SECONDS = 10.0


@dataclass
class PassResult:
    job: str
    trigger: str
    found: int = 0
    enqueued: int = 0
    already_queued: int = 0
    quarantined: int = 0
    disabled: bool = False
    seconds: float = 0.0
    error: str | None = None

    def summary(self) -> str:
        if self.disabled:
            return f"{self.job}: disabled, nothing enqueued"
        return (
            f"{self.job}: found {self.found}, enqueued {self.enqueued}, already queued "
            f"{self.already_queued}, quarantined {self.quarantined} in {self.seconds:.2f}s"
            + (f" (error: {self.error})" if self.error else "")
        )


def run_pass(
    job_class: type[ReconciledJob],
    *,
    trigger: str = "manual",
    owner: str = "cli",
    settings: Settings | None = None,
    keepalive: Callable[[], object] | None = None,
) -> PassResult:
    """Run one pass now and record it; never raises for a failing pending query
    (the error is recorded and returned), so one bad class cannot stop a scheduler.

    ``keepalive`` is called between pages at most every 10 s: the scheduler uses it
    to refresh its claim, so a long pass is not mistaken for an abandoned one."""
    from ..reconciled import switch_cache
    from ..store import pending as sql
    from ..store import quarantine, runs
    from ..store.engine import get_engine

    settings = settings or get_settings()
    engine = get_engine(settings)
    name = job_class.job_name
    result = PassResult(name, trigger)
    started = time.monotonic()
    run_id = runs.start_run(engine, job=name, trigger=trigger, scheduler=owner)
    try:
        # a pass decides with the current switch, not a cached one
        if not switch_cache(settings).is_enabled(name, fresh=True):
            result.disabled = True
        else:
            _scan(job_class, result, engine, sql, quarantine.keys(engine, name), keepalive,
                  distrust_locks=trigger == "redis_loss")
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        log.exception("pass of %s failed", name)
    result.seconds = time.monotonic() - started
    runs.finish_run(
        engine, run_id, found=result.found, enqueued=result.enqueued,
        already_queued=result.already_queued, quarantined=result.quarantined,
        disabled=result.disabled, error=result.error,
    )
    log.info("pass %s", result.summary())
    return result


def _scan(
    job_class: type[ReconciledJob], result: PassResult, engine: Any, sql: Any,
    quarantined: set[tuple[Any, ...]], keepalive: Callable[[], object] | None,
    distrust_locks: bool = False,
) -> None:
    stmt = job_class().pending()
    sql.key_columns(stmt)
    batch = int(job_class.batch_size)
    jitter = float(job_class.jitter)
    after: tuple[Any, ...] | None = None
    checked_types = False
    kept = time.monotonic()
    # Reading page k+1 from PostgreSQL overlaps with enqueuing page k into Redis (one
    # pusher thread; psycopg and redis-py release the GIL while they wait).
    with ThreadPoolExecutor(1, thread_name_prefix="reconcile-pass-push") as pusher:
        pushing: Future[None] | None = None
        while True:
            if keepalive is not None and time.monotonic() - kept > KEEPALIVE_SECONDS:
                keepalive()
                kept = time.monotonic()
            rows = sql.page(engine, stmt, after, batch)
            if not rows:
                break
            after = rows[-1]
            result.found += len(rows)
            if not checked_types:
                # Key values become JSON args: a UUID or datetime key would not survive.
                try:
                    check_args(list(rows[0]), result.job)
                except ArgumentError as exc:
                    raise ArgumentError(
                        f"{exc}; pending() must select JSON-native key columns "
                        "(cast UUIDs and timestamps to text)"
                    ) from None
                checked_types = True
            keys = [r for r in rows if r not in quarantined] if quarantined else rows
            result.quarantined += len(rows) - len(keys)
            if pushing is not None:
                pushing.result()  # at most one page in flight; re-raises its error
                pushing = None
            if keys:
                pushing = pusher.submit(_push, job_class, keys, jitter, result, distrust_locks)
            if len(rows) < batch:
                break
        if pushing is not None:
            pushing.result()


def _push(job_class: type[ReconciledJob], keys: list[tuple[Any, ...]], jitter: float,
          result: PassResult, distrust_locks: bool = False) -> None:
    if distrust_locks:
        # After a Redis loss, a surviving uniqueness lock is no evidence that its job
        # survived (eviction takes some keys and not others): drop the page's locks so
        # every pending key is enqueued again. A key still queued runs twice, which
        # step 2 of the protocol makes a no-op.
        get_broker().release_locks([job_class.lock_digest(job_class.queue, list(k)) for k in keys])
    ats = None
    if jitter > 0:
        now = time.time()
        ats = [now + random.uniform(0.0, jitter) for _ in keys]
    jids = enqueue(job_class, keys, ats=ats)
    pushed = sum(1 for j in jids if j is not None)
    result.enqueued += pushed
    result.already_queued += len(jids) - pushed
