"""The fast path of a reconcile pass: compact payload bytes for a page of keys, and
its push.

:class:`FastPass` builds, for each chunk of a page, the keys' canonical args JSON and
lock digests once, then compact pass payloads (``{"queue", "jid", "class", "args",
"pl" | "p"}``: the class's options, lock and timestamps are implied, see
:func:`reconcile.payload.expand_pass_payload`), and pushes them through
``pass_enqueue.lua`` (:class:`~reconcile.broker.pass_push.PassPusher`), probing first
which locks are held when the last chunk found most keys already queued. Its lock is a
pass lock (a member of the class's lock set), which the worker derives from the
payload. The reference it must equal, once expanded, is :func:`reconcile.client.enqueue`
(see :mod:`reconcile.scheduler.passes`, which chooses between them).
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from .. import client, tracing
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

    args: list[bytes]  # per key: its canonical args JSON (object keys sorted): payload args and lock member
    digests: bytes  # the keys' perform_async lock digests concatenated (hex, FastPass.width each)
    longest: int  # of args


class _Built(NamedTuple):
    """Payloads of some of a chunk's keys, ready for one :meth:`PassPusher.push`."""

    payloads: bytes  # each followed by b"\n"
    digests: bytes  # of these jobs, concatenated
    members: bytes  # their lock members (args JSON), each followed by b"\n"
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

    Payloads are compact (``{"queue","jid","class","args","pl"|"p"}``, about half the
    bytes of a full one), joined for a whole chunk at once (the parts of every payload
    in one ``b"".join``, the digests sliced from one hex string). Expanded by the
    worker (:func:`~reconcile.payload.expand_pass_payload`) a payload equals
    ``template.reference(...)``, the reference path's, but for its ``lock``, which is
    the pass lock ``@<class>\n<args JSON>`` instead of perform_async's digest; the
    digest sent with each key (for the check against perform_async's lock) is
    ``unique_digest(job_name, "", args)``, ``ReconciledJob.lock_digest``, computed from
    the same args JSON: ``tests/integration/test_pass_fast.py`` holds both to that.
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
        # one traceparent per pass (the pass span's, tracing on): in the template, so in every payload
        self.template = PayloadTemplate.of(self.name, queue, opts, bool(self.lock_ttl),
                                           tracing.current_traceparent(settings))
        self.head, self.mid = self.template.head, self.template.mid
        # the enqueue time's field: "pl" for a job holding a pass lock, else "p"
        self.stamp_open = b',"pl":' if self.lock_ttl else b',"p":'
        # the pass span's context (tracing on) rides after the stamp, the compact
        # payload's last field (prelude.lua's pass_lock() reads up to the stamp)
        tp = self.template.traceparent
        self.stamp_close = (b',"traceparent":' + orjson.dumps(tp) if tp is not None else b"") + b"}\n"
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
        """Each key's canonical args JSON and lock digest; ArgumentError (naming the
        value) for a key that is not JSON-native."""
        dumps, w = orjson.dumps, self.width
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
        option = 0 if simple else orjson.OPT_SORT_KEYS
        try:
            # the args JSON is canonical (object keys sorted): the payload's args and
            # the pass lock's member are the same bytes, so scripts can name the lock
            # from the payload (a tuple encodes as a JSON array, like the list of args)
            if w:
                for k in keys:
                    a = dumps(k, option=option)
                    parts.append(a)
                    h = prefix.copy()
                    h.update(a + b"]")
                    raw.append(h.digest())
            else:
                parts = [dumps(k, option=option) for k in keys]
        except orjson.JSONEncodeError:
            for k in keys:  # an int beyond 64 bits: check_args names it
                check_args(list(k), self.name, names)
            raise
        # one hex() for the chunk: the digests concatenated are the hex digests concatenated
        return _Encoded(parts, b"".join(raw).hex().encode(), max(map(len, parts)))

    def _payloads(self, enc: _Encoded, which: Sequence[int]) -> list[_Built]:
        """Compact payloads of the keys at ``which``, stamped ``now``, in groups of at
        most PUSH_BYTES (one push call each); PayloadTooLarge (before anything of the
        chunk is written) if one is over the limit."""
        n = len(which)
        # the enqueue time, to the millisecond (the payload's only timestamp; a
        # jittered job's run-at is its scheduled-set score, on the Redis server's clock)
        tail = self.stamp_open + orjson.dumps(round(time.time(), 3)) + self.stamp_close
        delays: list[float] | None = None
        if self.jitter > 0:
            delays = [random.uniform(0.0, self.jitter) for _ in range(n)]
        head, mid, args, digests, w = self.head, self.mid, enc.args, enc.digests, self.width
        longest = len(head) + 24 + len(mid) + enc.longest + len(tail)
        if longest - 1 > self.limit:
            self._too_large(enc, which, len(head) + 24 + len(mid) + len(tail) - 1)
        jids = os.urandom(12 * n).hex().encode()
        per_call = max(1, PUSH_BYTES // longest)
        out: list[_Built] = []
        for start in range(0, n, per_call):
            group = which[start : start + per_call]
            parts: list[bytes] = []
            for j, i in enumerate(group, start):
                parts += (head, jids[24 * j : 24 * j + 24], mid, args[i], tail)
            picked = b"".join([digests[w * i : w * i + w] for i in group])
            members = b"".join([args[i] + b"\n" for i in group]) if w else b""
            out.append(_Built(b"".join(parts), picked, members,
                              None if delays is None else delays[start : start + per_call], len(group)))
        return out

    def _too_large(self, enc: _Encoded, which: Sequence[int], fixed: int) -> None:
        """Raise PayloadTooLarge, with client.enqueue's message, for the first payload
        over the limit (``fixed``: the bytes of a payload besides its args)."""
        for i in which:
            size = fixed + len(enc.args[i])
            if size > self.limit:
                raise PayloadTooLarge(
                    f"payload of {self.name!r} is {size} bytes, over the max_payload_bytes "
                    f"limit of {self.limit}"
                )

    def turn_generation(self) -> None:
        """After the pass: turn the class's pass-lock generations if the current one
        is older than half of ``unique_for`` (see ``pass_enqueue.lua``)."""
        if self.lock_ttl:
            self.pusher.turn_generation(self.name, self.lock_ttl // 2)

    # -- pushing (the pusher thread) ------------------------------------------------

    def _push(self, enc: _Encoded, built: list[_Built] | None) -> tuple[int, int]:
        n = len(enc.args)
        if not self.job_class.enqueue_allowed():
            # the kill switch, checked per chunk like client.enqueue checks it per call
            return 0, n
        if built is None:
            members = b"".join([a + b"\n" for a in enc.args])
            flags = self.pusher.probe(self.name, enc.digests, self.width, members, self.queue, n)
            free = [i for i, f in enumerate(flags) if f == 49]  # b"1"
            self.new_fraction = len(free) / n
            if not free:
                return 0, n
            built = self._payloads(enc, free)
        pushed = 0
        for part in built:
            flags = self.pusher.push(
                job=self.name, queue=self.queue, digests=part.digests, width=self.width,
                members=part.members, payloads=part.payloads, count=part.jobs,
                delays=part.delays, overwrite=self.overwrite, half_life_ms=self.lock_ttl // 2,
            )
            pushed += flags.count(b"1")
        if sum(part.jobs for part in built) == n:
            self.new_fraction = pushed / n
        return pushed, n - pushed
