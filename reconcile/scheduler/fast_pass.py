"""The fast path of a reconcile pass: payload bytes for a page of keys, and its push.

:class:`FastPass` builds, for each chunk of a page, the keys' args JSON and lock
digests once, then the payloads from the class's
:class:`~reconcile.payload.PayloadTemplate` (the payloads of one class differ only in
jid, args and timestamps), and pushes them through ``pass_enqueue.lua``
(:class:`~reconcile.broker.pass_push.PassPusher`), probing first which locks are free
when the last chunk found most keys already queued. The reference it must equal is
:func:`reconcile.client.enqueue` (see :mod:`reconcile.scheduler.passes`, which
chooses between them).
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from .. import client
from ..broker import get_broker
from ..broker.pass_push import PassPusher
from ..config import Settings
from ..errors import PayloadTooLarge
from ..payload import PayloadTemplate, check_args

if TYPE_CHECKING:
    from ..reconciled import ReconciledJob

_SCALARS = frozenset({int, str, type(None)})
"""Key value types whose JSON is the same sorted or not, and that orjson refuses
exactly where :func:`check_args` does (ints beyond 64 bits); other types are checked
key by key."""


class _Encoded(NamedTuple):
    """A chunk's keys, encoded once whether the chunk is probed first or not."""

    args: list[bytes]  # per key: the payload's '","class":...,"args":' and the args JSON
    digests: bytes  # the keys' lock digests concatenated (hex, FastPass.width each)
    longest: int  # of args


class _Built(NamedTuple):
    """Payloads of some of a chunk's keys, ready for one :meth:`PassPusher.push`."""

    payloads: bytes  # each followed by b"\n"
    digests: bytes  # of these jobs, concatenated
    delays: list[float] | None  # jitter, seconds after the Redis server's clock
    jobs: int


PUSH_BYTES = 100_000
"""Most payload bytes in one push call; a chunk whose payloads are larger is pushed in
several calls (a key's lock and push stay in one call). A script's arguments take Redis
memory until it returns, and ``passes.IN_FLIGHT`` calls are held at once: this keeps them under
one 1,000-job ``enqueue.lua`` call (~250 KB), which matters on a small ``maxmemory``
(a 2 MB Redis refused two 230 KB calls in flight: tests/fault, allkeys-lru)."""

PROBE_BELOW = 0.5
"""Fraction of new keys in the last chunk under which the next chunk is probed first."""


class FastPass:
    """The fast path of one pass (see the module docstring): per-pass templates,
    payload building, and the pusher stage.

    Payload bytes are :meth:`PayloadTemplate.assemble`'s, joined for a whole chunk at
    once (the parts of every payload in one ``b"".join``, the digests sliced from one
    hex string), so they equal ``encode(template.reference(...))``, the reference path;
    the lock digest is ``unique_digest(job_name, "", args)``,
    ``ReconciledJob.lock_digest``, computed from the same args JSON:
    ``tests/integration/test_pass_fast.py`` holds both to that.
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
               overwrite: bool) -> FastPass | None:
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
        delays: list[float] | None = None
        tails: list[bytes] | None = None
        longest_tail = len(ready)
        if self.jitter > 0:
            # The run-ats are delays that pass_enqueue.lua adds to Redis's clock; the
            # payload's "at" is this host's estimate of that time, for display only.
            delays = [random.uniform(0.0, self.jitter) for _ in range(n)]
            tails = [created + template.at_field(now + d) + lock_open if d > 0 else ready for d in delays]
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
            out.append(_Built(b"".join(parts), picked,
                              None if delays is None else delays[start : start + per_call], len(group)))
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
            flags = self.pusher.probe(enc.digests, self.width, self.queue, self.lock_ttl)
            free = [i for i, f in enumerate(flags) if f == 49]  # b"1"
            self.new_fraction = len(free) / n
            if not free:
                return 0, n
            built = self._payloads(enc, free)
        pushed = 0
        for part in built:
            flags = self.pusher.push(
                queue=self.queue, lock_ttl_ms=self.lock_ttl, digests=part.digests, width=self.width,
                payloads=part.payloads, count=part.jobs, delays=part.delays,
                overwrite=self.overwrite,
            )
            pushed += flags.count(b"1")
        if sum(part.jobs for part in built) == n:
            self.new_fraction = pushed / n
        return pushed, n - pushed
