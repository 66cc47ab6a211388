"""One reconcile pass: re-derive a ReconciledJob's pending keys and enqueue them.

``run_pass(job_class, trigger=...)``:

1. record the start in ``reconcile_runs``;
2. a disabled class (kill switch) enqueues nothing: the run is recorded as disabled,
   with the backlog behind the switch as ``found`` (one ``count(*)`` of ``pending()``,
   on the scan's database), so a disabled class does not look idle;
3. scan ``pending()`` in keyset pages of ``batch_size`` keys, each page in its own
   short transaction (no long snapshot: rows that change during the pass are seen
   as they are when their page is read);
4. drop quarantined keys (read once per pass);
5. enqueue each page with one Lua call that takes each key's uniqueness lock and
   gives each key a delay spread uniformly over ``jitter`` seconds (the script adds it
   to the Redis server's clock: a scheduler with a skewed clock still spreads the page
   over the next ``jitter`` seconds, not earlier or later); a held lock
   means the key is already queued (or waiting for a retry, whose backoff is kept),
   except in a pass triggered by a Redis loss, which takes the page's locks over
   (a lock that survived an eviction proves nothing about its job);
6. back-pressure: before each page after the first, a class with a high water
   (``high_water``, else the setting ``pass_high_water``; 0 or None: no limit) checks
   its backlog, the length of its queue plus, with a ``jitter``, the keys this pass put
   in the scheduled set. Above the high water the pass stops enqueuing and counts the
   keys after the last page it read (one ``count(*)`` in PostgreSQL) as *deferred*; the
   next pass finds them, since passes are level-triggered. The check is one ``LLEN``
   per page, and up to :data:`IN_FLIGHT` chunks may still land after it;
7. record found / enqueued / already queued / quarantined / deferred and the duration.
   ``found`` counts the keys read, so a pass that deferred found fewer than are pending.

A pass of one partition of a class with ``partitions = N`` (``partition=(i, N)``, what
the scheduler fires for the row ``<job>#<i>/<N>``) does all of the above for its key
range only (:mod:`reconcile.scheduler.partitioning`): the range bounds every page's
SQL, the disabled backlog and the deferred count; the run record names the
partition; a pass that completes records the bounds generation it scanned.

Passes are idempotent and level-triggered: running one twice, or concurrently with a
worker draining the same keys, enqueues nothing twice that matters.

A pass is a pipeline: while Redis runs the scripts of pages k-1 and k (sent by two
pusher threads, so Redis has the next one queued when one finishes), this thread
reads page k+1 from PostgreSQL and builds its payloads. A page is enqueued one of two
ways:

* **fast path** (no client middleware, no testing interceptor, and the class keeps
  ``ReconciledJob.lock_digest``): payload bytes are built from a per-page template
  (the payloads of one class differ only in jid, args and timestamps) and sent through
  ``pass_enqueue.lua`` (:class:`~reconcile.broker.pass_push.PassPusher`): the page's
  constants once, each key's digest and payload packed into one argument each. The
  payloads are byte for byte what :func:`reconcile.client.enqueue` builds and the lock
  digests are the same, so a pass and ``perform_async`` of one key dedupe. When the
  previous page found most keys already queued, a page is first *probed* (which
  locks are held: one read-only call with the digests only) and payloads are built and
  pushed for the free keys only, so a pass over a million queued keys builds no
  payload. A probe takes no lock: a pass that dies between probe and push leaves no
  lock without its job. Otherwise the page is pushed directly (one call; a held lock
  drops its job inside the script);
* **slow path** (client middleware or a testing interceptor installed, a custom
  ``lock_digest``, or the setting ``fast_paths`` false): :func:`reconcile.client.enqueue`,
  so middleware sees, may change and may reject every payload, as for any enqueue.
  It is also the reference the fast path must equal: both build payloads from one
  :class:`~reconcile.payload.PayloadTemplate`.

Tracing (``tracing = "otel"``) does not change the choice: the pass's span is current
while it runs; on the fast path its ``traceparent`` is part of the pass's template, so
every key carries it, and on the slow path each chunk's ``enqueue`` span is its child
(:mod:`reconcile.tracing`).
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import client, middleware, tracing
from ..broker import get_broker
from ..config import Settings, get_settings
from ..errors import InvalidKey
from .fast_pass import FastPass

if TYPE_CHECKING:
    from ..keys import KeyCodec
    from ..reconciled import ReconciledJob
    from .partitioning import KeyRange

log = logging.getLogger("reconcile.scheduler")

KEEPALIVE_SECONDS = 10.0

IN_FLIGHT = 2
"""Chunks sent to Redis and not yet answered, at most (see
:data:`reconcile.scheduler.fast_pass.PUSH_BYTES`)."""


@dataclass
class PassResult:
    job: str
    trigger: str
    found: int = 0
    enqueued: int = 0
    already_queued: int = 0
    quarantined: int = 0
    deferred: int = 0
    partition: tuple[int, int] | None = None
    """(index, count) of a partitioned pass's key range; None: every key."""
    replica_lag: float | None = None
    """Seconds the read replica scanned (``pending_database_url``) was behind its
    primary when the pass started; None: the pass read the primary."""
    disabled: bool = False
    seconds: float = 0.0
    error: str | None = None

    @property
    def name(self) -> str:
        """The job name, with ``#i/N`` for a partition's pass."""
        if self.partition is None:
            return self.job
        return f"{self.job}#{self.partition[0]}/{self.partition[1]}"

    def summary(self) -> str:
        if self.disabled:
            return f"{self.name}: disabled, nothing enqueued ({self.found} pending keys skipped)"
        return (
            f"{self.name}: found {self.found}, enqueued {self.enqueued}, already queued "
            f"{self.already_queued}, quarantined {self.quarantined}"
            + (f", deferred {self.deferred} (high water)" if self.deferred else "")
            + (f", replica lag {self.replica_lag:.1f}s" if self.replica_lag is not None else "")
            + f" in {self.seconds:.2f}s"
            + (f" (error: {self.error})" if self.error else "")
        )


def run_pass(
    job_class: type[ReconciledJob],
    *,
    trigger: str = "manual",
    owner: str = "cli",
    settings: Settings | None = None,
    keepalive: Callable[[], object] | None = None,
    partition: tuple[int, int] | None = None,
) -> PassResult:
    """Run one pass now and record it; never raises for a failing pending query
    (the error is recorded and returned), so one bad class cannot stop a scheduler.

    ``keepalive`` is called between pages at most every 10 s: the scheduler uses it
    to refresh its claim, so a long pass is not mistaken for an abandoned one.
    ``partition`` (index, count): scan only that partition's key range (None: every
    key, whatever the class's ``partitions``; what ``reconcile run`` does)."""
    from ..reconciled import switch_cache
    from ..store import partitions, quarantine, runs
    from ..store.engine import get_engine, get_pending_engine
    from .partitioning import key_range, row_name

    settings = settings or get_settings()
    engine = get_engine(settings)
    name = job_class.job_name
    if partition is not None and partition[1] == 1:
        partition = None  # one partition is every key
    result = PassResult(name, trigger, partition=partition)
    started = time.monotonic()
    run_id = runs.start_run(engine, job=name, trigger=trigger, scheduler=owner, partition=partition)
    trace = tracing.start_pass(settings, name, trigger)  # the "pass" span (tracing on), current until end
    keys: KeyRange | None = None
    try:
        if partition is not None:
            keys = key_range(job_class, *partition, engine, get_pending_engine(settings))
        # a pass decides with the current switch, not a cached one
        if not switch_cache(settings).is_enabled(name, fresh=True):
            result.disabled = True
            result.found = _backlog(job_class, settings, keys)
        elif keys is None or not keys.empty:
            _scan(job_class, result, settings, quarantine.keys(engine, name), keepalive,
                  distrust_locks=trigger == "redis_loss", span=keys)
        if keys is not None:
            # this range of this generation is scanned: once every partition's is, the
            # bounds may move (partitioning.needs_bounds)
            partitions.mark_scanned(engine, row_name(job_class, keys.index, keys.count), keys.gen,
                                    result.found + result.deferred)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        trace.failed(exc)
        log.exception("pass of %s failed", result.name)
    result.seconds = time.monotonic() - started
    trace.end(result)
    runs.finish_run(
        engine, run_id, found=result.found, enqueued=result.enqueued,
        already_queued=result.already_queued, quarantined=result.quarantined,
        deferred=result.deferred, disabled=result.disabled,
        replica_lag_ms=None if result.replica_lag is None else round(result.replica_lag * 1000),
        error=result.error,
    )
    log.info("pass %s", result.summary())
    return result


def _scan(
    job_class: type[ReconciledJob], result: PassResult, settings: Settings,
    quarantined: set[tuple[Any, ...]], keepalive: Callable[[], object] | None,
    distrust_locks: bool = False, span: KeyRange | None = None,
) -> None:
    from ..store import keyset, pending
    from ..store.engine import get_pending_engine

    stmt = job_class().pending()
    # the scan may read a replica (pending_database_url); runs, quarantine and switches
    # stay on the primary (run_pass's engine), and every delivery re-checks there
    scan = get_pending_engine(settings)
    if settings.pending_database_url:
        result.replica_lag = pending.replica_lag(scan)
    batch = int(job_class.batch_size)
    jitter = float(job_class.jitter)
    upper = None if span is None else span.upper
    read = keyset.reader(scan, stmt, batch, fast=settings.fast_paths, upper=upper)
    fast = FastPass.create(job_class, settings, jitter, distrust_locks)
    step = max(1, settings.bulk_batch_size)
    high_water = high_water_of(job_class, settings)
    broker = get_broker(settings) if high_water else None
    # a partition starts after its lower bound (the keyset's "after", in the SQL)
    after: tuple[Any, ...] | None = None if span is None else span.lower
    read_any = False
    # Keys become payload args and identities in their canonical form (reconcile.keys).
    # Integer and text columns come from the driver as ints and strs, which are that
    # form already: such pages are used as read (the common case, and the fast one).
    codec = job_class.key_codec()
    convert = not codec.driver_is_wire
    if quarantined:
        quarantined = _canonical_keys(codec, quarantined)
    kept = time.monotonic()
    # Two stages overlap: this thread reads page k+1 from PostgreSQL and builds its
    # payloads while pusher threads wait for Redis to run the scripts of the chunks
    # before (psycopg and redis-py release the GIL while they wait). With IN_FLIGHT
    # chunks sent, Redis has the next script queued when one finishes.
    with ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="reconcile-pass-push") as pusher:
        pushing: deque[Future[tuple[int, int]]] = deque()

        def settle_one() -> None:
            enqueued, held = pushing.popleft().result()  # re-raises the chunk's error
            result.enqueued += enqueued
            result.already_queued += held

        while True:
            if keepalive is not None and time.monotonic() - kept > KEEPALIVE_SECONDS:
                keepalive()
                kept = time.monotonic()
            if broker is not None and read_any:
                backlog = broker.queue_length(job_class.queue) + (result.enqueued if jitter > 0 else 0)
                if backlog > high_water:
                    result.deferred = pending.count_after(scan, stmt, after, upper)
                    log.info("pass %s: backlog %d above high water %d, %d keys deferred",
                             job_class.job_name, backlog, high_water, result.deferred)
                    break
            rows = read(after)
            if not rows:
                break
            after = rows[-1]
            read_any = True
            result.found += len(rows)
            page = [tuple(codec.wire(r)) for r in rows] if convert else rows
            keys = [r for r in page if r not in quarantined] if quarantined else page
            result.quarantined += len(rows) - len(keys)
            for start in range(0, len(keys), step):
                chunk = keys[start : start + step]
                task: Callable[[], tuple[int, int]]
                if fast is not None and not _needs_enqueue_path():
                    # built here, before waiting: this is the work that overlaps Redis
                    task = fast.prepare(chunk)
                else:
                    task = _slow_push(job_class, chunk, jitter, distrust_locks)
                if len(pushing) >= IN_FLIGHT:
                    settle_one()
                pushing.append(pusher.submit(task))
            if len(rows) < batch:
                break
        while pushing:
            settle_one()
    if fast is not None:
        # after the pass (complete or not): lock generations turn by age, so locks
        # that no pass renewed lapse after about unique_for, as a TTL would
        fast.turn_generation()


def _backlog(job_class: type[ReconciledJob], settings: Settings, keys: KeyRange | None) -> int:
    """How many keys of ``job_class`` (in ``keys``, a partition's range) are pending:
    the pass of a disabled class records what the switch holds back."""
    from ..store import pending
    from ..store.engine import get_pending_engine

    if keys is not None and keys.empty:
        return 0
    return pending.count_after(get_pending_engine(settings), job_class().pending(),
                               None if keys is None else keys.lower,
                               None if keys is None else keys.upper)


def high_water_of(job_class: type[ReconciledJob], settings: Settings) -> int:
    """The backlog above which a pass of ``job_class`` stops enqueuing (0: no limit):
    the class's ``high_water``, else the setting ``pass_high_water``."""
    own = job_class.high_water
    return settings.pass_high_water if own is None else int(own)


def _canonical_keys(codec: KeyCodec, keys: set[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
    """Quarantined keys in canonical form, to compare with the pass's (an entry written
    before keys were canonical, or one no longer valid for the columns, is kept as is)."""
    out: set[tuple[Any, ...]] = set()
    for k in keys:
        try:
            out.add(tuple(codec.wire(k)))
        except InvalidKey:
            out.add(k)
    return out


def _needs_enqueue_path() -> bool:
    """Client middleware may mutate or reject payloads, and a testing interceptor
    receives them instead of Redis: both only exist on ``client.enqueue``'s path."""
    return bool(middleware.client_middleware.items) or client._interceptor is not None


def _slow_push(job_class: type[ReconciledJob], keys: list[tuple[Any, ...]], jitter: float,
               distrust_locks: bool) -> Callable[[], tuple[int, int]]:
    """The chunk through :func:`reconcile.client.enqueue` (middleware, interceptor);
    the task returns (enqueued, not enqueued)."""

    def push() -> tuple[int, int]:
        if distrust_locks:
            # After a Redis loss, a surviving uniqueness lock is no evidence that its
            # job survived (eviction takes some keys and not others): drop the chunk's
            # locks so every pending key is enqueued again. A key still queued runs
            # twice, which step 2 of the protocol makes a no-op.
            get_broker().release_locks([job_class.lock_digest(job_class.queue, list(k)) for k in keys])
        # jitter as delays: enqueue.lua adds them to the Redis server's clock
        delays = [random.uniform(0.0, jitter) for _ in keys] if jitter > 0 else None
        jids = client.enqueue(job_class, keys, delays=delays)
        pushed = sum(1 for j in jids if j is not None)
        return pushed, len(jids) - pushed

    return tracing.carry_context(push)  # a pusher thread runs it: its enqueue span under the pass's
