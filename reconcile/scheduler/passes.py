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
   except in a pass triggered by a Redis loss, which takes the page's locks over
   (a lock that survived an eviction proves nothing about its job);
6. record found / enqueued / already queued / quarantined and the duration.

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
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from .. import client, middleware
from ..broker import get_broker
from ..broker.pass_push import PassPusher
from ..config import Settings, get_settings
from ..errors import InvalidKey, PayloadTooLarge
from ..payload import PayloadTemplate, check_args

if TYPE_CHECKING:
    from ..keys import KeyCodec
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
            _scan(job_class, result, engine, settings, quarantine.keys(engine, name), keepalive,
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
    job_class: type[ReconciledJob], result: PassResult, engine: Any, settings: Settings,
    quarantined: set[tuple[Any, ...]], keepalive: Callable[[], object] | None,
    distrust_locks: bool = False,
) -> None:
    from ..store import keyset

    stmt = job_class().pending()
    batch = int(job_class.batch_size)
    jitter = float(job_class.jitter)
    read = keyset.reader(engine, stmt, batch)
    fast = _FastPass.create(job_class, settings, jitter, distrust_locks)
    step = max(1, settings.bulk_batch_size)
    after: tuple[Any, ...] | None = None
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
            rows = read(after)
            if not rows:
                break
            after = rows[-1]
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
        ats = None
        if jitter > 0:
            now = time.time()
            ats = [now + random.uniform(0.0, jitter) for _ in keys]
        jids = client.enqueue(job_class, keys, ats=ats)
        pushed = sum(1 for j in jids if j is not None)
        return pushed, len(jids) - pushed

    return push


_SCALARS = frozenset({int, str, type(None)})
"""Key value types whose JSON is the same sorted or not, and that orjson refuses
exactly where :func:`check_args` does (ints beyond 64 bits); other types are checked
key by key."""


class _Encoded(NamedTuple):
    """A chunk's keys, encoded once whether the chunk is probed first or not."""

    args: list[bytes]  # per key: the payload's '","class":...,"args":' and the args JSON
    digests: bytes  # the keys' lock digests concatenated (hex, _FastPass.width each)
    longest: int  # of args


class _Built(NamedTuple):
    """Payloads of some of a chunk's keys, ready for one :meth:`PassPusher.push`."""

    payloads: bytes  # each followed by b"\n"
    digests: bytes  # of these jobs, concatenated
    ats: list[float] | None
    jobs: int
    now: float


IN_FLIGHT = 2
"""Chunks sent to Redis and not yet answered, at most."""

PUSH_BYTES = 100_000
"""Most payload bytes in one push call; a chunk whose payloads are larger is pushed in
several calls (a key's lock and push stay in one call). A script's arguments take Redis
memory until it returns, and IN_FLIGHT calls are held at once: this keeps them under
one 1,000-job ``enqueue.lua`` call (~250 KB), which matters on a small ``maxmemory``
(a 2 MB Redis refused two 230 KB calls in flight: tests/fault, allkeys-lru)."""

PROBE_BELOW = 0.5
"""Fraction of new keys in the last chunk under which the next chunk is probed first."""


class _FastPass:
    """The fast path of one pass (see the module docstring): per-pass templates,
    payload building, and the pusher stage.

    Payload bytes are :meth:`PayloadTemplate.assemble`'s, joined for a whole chunk at
    once (the parts of every payload in one ``b"".join``, the digests sliced from one
    hex string), so they equal ``encode(template.reference(...))``, the reference path;
    the lock digest is ``unique_digest(job_name, "", args)``,
    ``ReconciledJob.lock_digest``, computed from the same args JSON:
    ``tests/test_pass_fast.py`` holds both to that.
    """

    WIDTH = 32  # hex characters of a blake2b-128 digest (client.unique_digest)

    def __init__(self, job_class: type[ReconciledJob], settings: Settings, jitter: float,
                 overwrite: bool) -> None:
        opts = job_class.options()
        queue = client.check_queue(job_class.job_name, opts["queue"])
        unique_for = opts.get("unique_for")
        dumps = orjson.dumps
        self.job_class = job_class
        self.name = job_class.job_name
        self.queue = queue
        self.lock_ttl = int(unique_for * 1000) if unique_for else 0
        self.width = self.WIDTH if self.lock_ttl else 0
        self.jitter = jitter
        self.overwrite = overwrite
        self.limit = settings.max_payload_bytes
        self.pusher = PassPusher(get_broker(settings))
        self.new_fraction = 0.0  # of the last chunk pushed: probe first until keys are new
        self.template = PayloadTemplate.of(self.name, queue, opts, bool(self.lock_ttl))
        self.head, self.mid = self.template.head, self.template.mid
        self.lock_open = PayloadTemplate.LOCK_OPEN if self.lock_ttl else b""
        self.close = b'"}\n' if self.lock_ttl else b"}\n"  # the newline frames the payload
        self.digest_prefix = hashlib.blake2b(b"[" + dumps(self.name) + b',"",', digest_size=16)

    @classmethod
    def create(cls, job_class: type[ReconciledJob], settings: Settings, jitter: float,
               overwrite: bool) -> _FastPass | None:
        """The fast path for ``job_class``, or None where only ``client.enqueue`` is right
        (or asked for: setting ``fast_paths`` false)."""
        from ..reconciled import ReconciledJob

        if not settings.fast_paths:
            return None  # the reference: client.enqueue, which builds PayloadTemplate.reference dicts

        owner = next(c for c in job_class.__mro__ if "lock_digest" in vars(c))
        if owner is not ReconciledJob:
            return None  # a custom identity: its digests are only known to client.enqueue
        return cls(job_class, settings, jitter, overwrite)

    # -- building (the reading thread, overlapping the previous chunk's push) -------

    def prepare(self, keys: list[tuple[Any, ...]]) -> Callable[[], tuple[int, int]]:
        """Args JSON and digests of ``keys``, and their payloads unless the chunk will be
        probed first; returns the pusher stage's task for the chunk, which returns
        (enqueued, already queued)."""
        enc = self._encode(keys)
        probe = self.width > 0 and not self.overwrite and self.new_fraction < PROBE_BELOW
        built = None if probe else self._payloads(enc, range(len(keys)))
        return lambda: self._push(enc, built)

    def _encode(self, keys: list[tuple[Any, ...]]) -> _Encoded:
        """Each key's args part (``mid`` + args JSON) and lock digest; ArgumentError
        (naming the value) for a key that is not JSON-native."""
        dumps, mid, w = orjson.dumps, self.mid, self.width
        # unique_digest hashes orjson.dumps([name, "", args], OPT_SORT_KEYS): the hash
        # state after '["<name>","",' is copied for each key (cheaper than hashing anew)
        prefix = self.digest_prefix
        # str, int and None encode the same with OPT_SORT_KEYS or without, and orjson
        # refuses exactly the ints check_args refuses: such keys need no check_args
        simple = {type(v) for k in keys for v in k} <= _SCALARS
        names = self.job_class.arg_names()
        if not simple:
            for k in keys:
                check_args(list(k), self.name, names)
        parts: list[bytes] = []
        raw: list[bytes] = []
        try:
            # Each orjson result is copied (mid + a) and dropped at once: keeping
            # thousands of them alive measured 2.6 us each against 0.09 us for the copy
            # (orjson allocates its output large, then shrinks it).
            if simple and w:
                for k in keys:
                    a = dumps(k)  # a tuple encodes as a JSON array, like the list of args
                    parts.append(mid + a)
                    h = prefix.copy()
                    h.update(a + b"]")
                    raw.append(h.digest())
            else:
                for k in keys:
                    parts.append(mid + dumps(k))
                    if w:
                        h = prefix.copy()
                        h.update(dumps(k, option=orjson.OPT_SORT_KEYS) + b"]")
                        raw.append(h.digest())
        except orjson.JSONEncodeError:
            for k in keys:  # an int beyond 64 bits: check_args names it
                check_args(list(k), self.name, names)
            raise
        # one hex() for the chunk: the digests concatenated are the hex digests concatenated
        return _Encoded(parts, b"".join(raw).hex().encode(), max(map(len, parts)))

    def _payloads(self, enc: _Encoded, which: Sequence[int]) -> list[_Built]:
        """Payloads of the keys at ``which``, built for ``now``, in groups of at most
        PUSH_BYTES (one push call each); PayloadTooLarge (before anything of the chunk
        is written) if one is over the limit."""
        n = len(which)
        lock_open = self.lock_open
        now = time.time()
        template = self.template
        created = template.created(now)
        ready = template.ready(now) + lock_open
        ats: list[float] | None = None
        tails: list[bytes] | None = None
        longest_tail = len(ready)
        if self.jitter > 0:
            ats = [now + random.uniform(0.0, self.jitter) for _ in range(n)]
            tails = [created + template.at_field(at) + lock_open if at > now else ready for at in ats]
            longest_tail = max(map(len, tails))
        longest = len(self.head) + 24 + enc.longest + longest_tail + self.width + len(self.close)
        if longest - 1 > self.limit:
            self._too_large(enc, which, tails or [ready] * n)
        jids = os.urandom(12 * n).hex().encode()
        w, head, close, args, digests = self.width, self.head, self.close, enc.args, enc.digests
        per_call = max(1, PUSH_BYTES // longest)
        out: list[_Built] = []
        for start in range(0, n, per_call):
            group = which[start : start + per_call]
            parts: list[bytes] = []
            for j, i in enumerate(group, start):
                parts += (head, jids[24 * j : 24 * j + 24], args[i], ready if tails is None else tails[j],
                          digests[w * i : w * i + w], close)
            picked = b"".join([digests[w * i : w * i + w] for i in group])
            out.append(_Built(b"".join(parts), picked, None if ats is None else ats[start : start + per_call],
                              len(group), now))
        return out

    def _too_large(self, enc: _Encoded, which: Sequence[int], tails: list[bytes]) -> None:
        """Raise PayloadTooLarge, with client.enqueue's message, for the first payload
        over the limit."""
        for j, i in enumerate(which):
            size = len(self.head) + 24 + len(enc.args[i]) + len(tails[j]) + self.width + len(self.close) - 1
            if size > self.limit:
                raise PayloadTooLarge(
                    f"payload of {self.name!r} is {size} bytes, over the max_payload_bytes "
                    f"limit of {self.limit}"
                )

    # -- pushing (the pusher thread) ------------------------------------------------

    def _push(self, enc: _Encoded, built: list[_Built] | None) -> tuple[int, int]:
        n = len(enc.args)
        if not self.job_class.enqueue_allowed():
            # the kill switch, checked per chunk like client.enqueue checks it per call
            return 0, n
        if built is None:
            flags = self.pusher.probe(enc.digests, self.width)
            free = [i for i, f in enumerate(flags) if f == 49]  # b"1"
            self.new_fraction = len(free) / n
            if not free:
                return 0, n
            built = self._payloads(enc, free)
        pushed = 0
        for part in built:
            flags = self.pusher.push(
                queue=self.queue, lock_ttl_ms=self.lock_ttl, digests=part.digests, width=self.width,
                payloads=part.payloads, count=part.jobs, now=part.now, ats=part.ats,
                overwrite=self.overwrite,
            )
            pushed += flags.count(b"1")
        if sum(part.jobs for part in built) == n:
            self.new_fraction = pushed / n
        return pushed, n - pushed
