"""The enqueue path: arguments -> payload -> client middleware -> one Lua call per batch.

``enqueue`` is what ``perform_async``, ``perform_in``, ``perform_at``, ``perform_bulk``
and ``set(...)`` all call. Contracts:

* arguments are checked before anything is written; a non-JSON-native argument raises
  :class:`~reconcile.errors.ArgumentError` naming it, and a payload over
  ``max_payload_bytes`` raises :class:`~reconcile.errors.PayloadTooLarge`; in a bulk
  call every job is checked first, so a bad one writes nothing;
* a job rejected by client middleware, or dropped because its uniqueness lock is held,
  yields ``None`` in place of its jid;
* jobs are pushed ``bulk_batch_size`` (default 1000) per round trip;
* with the setting ``tracing = "otel"``, a call is one ``enqueue`` span and every
  payload of the call carries its ``traceparent`` (:mod:`reconcile.tracing`);
* whose clock counts: a run-at is the Redis server's. ``delay`` (``perform_in``,
  ``set(wait=)``) and ``delays`` (a pass's jitter) are sent as delays that the script
  adds to Redis's ``TIME``; ``at`` (``perform_at``, ``set(wait_until=)``) is an
  absolute time the application chose and stays absolute: the job runs when Redis's
  clock reaches it. This host's ``time.time()`` only stamps the payload's
  informational ``created_at`` / ``enqueued_at`` / ``at`` fields.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from . import middleware, tracing
from .broker import PushRecord, get_broker
from .config import Settings, get_settings
from .errors import PayloadTooLarge
from .identity import unique_digest
from .jobclass import JobClass
from .payload import PayloadTemplate, check_args, encode, new_jid, pass_lock_member, valid_queue

__all__ = ["check_queue", "enqueue", "set_interceptor", "unique_digest"]


class Interceptor(Protocol):
    """Test-mode hook (see :mod:`reconcile.testing`): receives payloads instead of Redis."""

    # job_class is the Job subclass enqueued; typed Any because parameter types are
    # contravariant: an interceptor annotated with the concrete ``type[Job]`` (which
    # it needs, to perform jobs) would not implement ``intercept(job_class: JobClass)``
    def intercept(self, job_class: Any, payloads: list[dict[str, Any]]) -> None: ...


_interceptor: Interceptor | None = None


def set_interceptor(interceptor: Interceptor | None) -> Interceptor | None:
    """Install (or remove, with None) the test-mode hook; returns the previous one."""
    global _interceptor
    previous, _interceptor = _interceptor, interceptor
    return previous


def check_queue(job: str, queue: Any) -> str:
    """``queue`` if it is a valid queue name; ArgumentError naming the job otherwise
    (the one rule, :func:`reconcile.payload.check_queue`)."""
    return valid_queue(job, queue)




def enqueue(
    job_class: JobClass,
    args_list: Sequence[Sequence[Any]],
    *,
    options: dict[str, Any] | None = None,
    at: float = 0.0,
    delay: float = 0.0,
    delays: Sequence[float] | None = None,
) -> list[str | None]:
    """Enqueue one job per entry of ``args_list``; returns jids (None where not enqueued).

    ``options`` override class options for these jobs: ``queue``, ``retry``,
    ``unique_for``, ``unique_until``. ``at`` is an absolute epoch time: the jobs run
    when the Redis server's clock reaches it (0, or a time Redis has passed, means
    now). ``delay`` is seconds from now on Redis's clock. ``delays`` gives each job
    its own delay instead (reconcile passes spread with jitter). At most one of the
    three is given.
    """
    settings = get_settings()
    if tracing.enabled(settings):
        # one "enqueue" span per call; its context is stamped in every payload (the template's)
        queue = {**job_class.options(), **(options or {})}.get("queue")
        return tracing.traced_enqueue(job_class, queue, len(args_list), lambda traceparent: _enqueue(
            job_class, args_list, settings, options, at, delay, delays, traceparent))
    return _enqueue(job_class, args_list, settings, options, at, delay, delays, None)


def _enqueue(
    job_class: JobClass, args_list: Sequence[Sequence[Any]], settings: Settings,
    options: dict[str, Any] | None, at: float, delay: float, delays: Sequence[float] | None,
    traceparent: str | None,
) -> list[str | None]:
    """:func:`enqueue`, with the payloads' ``traceparent`` (None: none)."""
    if (at and delay) or (delays is not None and (at or delay)):
        raise ValueError("enqueue: give at most one of at, delay and delays")
    opts = job_class.options() if not options else {**job_class.options(), **options}
    queue = check_queue(job_class.job_name, opts["queue"])
    names = job_class.arg_names()
    unique_for = opts.get("unique_for")
    lock_ttl = int(unique_for * 1000) if unique_for else 0
    # this host's clock: only the payloads' informational stamps (created_at, and the
    # "at" a job shows); the run-at itself is Redis's (see the module docstring)
    now = time.time()
    if delay > 0:
        shown = now + delay
    else:
        delay = 0.0
        shown = at if at > now else 0.0

    template = PayloadTemplate.of(job_class.job_name, queue, opts, bool(lock_ttl), traceparent)

    if job_class.keyed:
        # One identity per row: "3", 3.0 and 3 become the key's canonical form before
        # any lock digest or payload is made of them (InvalidKey where that would lose
        # information); a bulk call with one bad key writes nothing.
        canonical = job_class.canonical_args
        args_list = [canonical(a) for a in args_list]
    if not job_class.enqueue_allowed():
        return [None] * len(args_list)
    chain = middleware.client_middleware.items
    if chain or _interceptor is not None or not settings.fast_paths:
        # the reference: one dict per job (what middleware and the interceptor see)
        payloads = _build_dicts(job_class, template, args_list, names, lock_ttl, now, shown, delays, chain)
        if _interceptor is not None:
            _interceptor.intercept(job_class, [p for p in payloads if p is not None])
            return [p["jid"] if p is not None else None for p in payloads]
        records, jids = _records_from_dicts(payloads, at, delay, delays, lock_ttl, settings.max_payload_bytes,
                                            pass_class_of(job_class))
    else:
        records, jids = _build_records(job_class, template, args_list, names, lock_ttl, now, shown, at, delay,
                                       delays, settings.max_payload_bytes)

    out: list[str | None] = [None] * len(args_list)
    broker = get_broker(settings)
    step = settings.bulk_batch_size
    index = not job_class.keyed  # plain jobs are found by jid; ReconciledJobs by key
    for start in range(0, len(records), step):
        # enqueue_replicas guards plain jobs only: a ReconciledJob lost in a failover is
        # found again by its next pass (and a pass must not fail on a slow replica)
        flags = broker.push(records[start : start + step], index, replicated=not job_class.keyed)
        for j, ok in enumerate(flags):
            if ok:
                slot, jid = jids[start + j]
                out[slot] = jid
    return out


def _build_dicts(
    job_class: JobClass, template: PayloadTemplate, args_list: Sequence[Sequence[Any]], names: list[str],
    lock_ttl: int, now: float, shown: float, delays: Sequence[float] | None, chain: tuple[Any, ...],
) -> list[dict[str, Any] | None]:
    """Payload dicts (:meth:`PayloadTemplate.reference`), passed through client
    middleware (None where it rejected one). ``shown``: the "at" the payloads show (0:
    none), this host's estimate; with ``delays``, now plus each job's delay."""
    name = job_class.job_name
    arity = job_class.arity()
    payloads: list[dict[str, Any] | None] = []
    for i, args in enumerate(args_list):
        args = list(args)
        check_args(args, name, names, arity)
        at = shown if delays is None else (now + delays[i] if delays[i] > 0 else 0.0)
        lock = job_class.lock_digest(template.queue, args) if lock_ttl else ""
        payload: dict[str, Any] | None = template.reference(new_jid(), args, now, at, lock)
        if chain:
            payload = middleware.run_client(chain, job_class, payload)  # type: ignore[arg-type]
        payloads.append(payload)
    return payloads


def pass_class_of(job_class: JobClass) -> str:
    """The job name of a class whose keys may hold pass locks (``pass_enqueue.lua``):
    a ReconciledJob with the default identity (:meth:`Job.pass_lock_name`); "" for
    any other class."""
    return job_class.pass_lock_name()


def pass_lock_of(name: str, args: Sequence[Any]) -> str:
    """``<class>\\n<args JSON>``: the pass lock a pass would hold for this key (its
    canonical args, object keys sorted), for :class:`PushRecord`."""
    return name + "\n" + pass_lock_member(args).decode()


def _records_from_dicts(
    payloads: list[dict[str, Any] | None], at: float, delay: float, delays: Sequence[float] | None,
    lock_ttl: int, limit: int, pass_class: str = "",
) -> tuple[list[PushRecord], list[tuple[int, str]]]:
    records: list[PushRecord] = []
    jids: list[tuple[int, str]] = []
    for i, p in enumerate(payloads):
        if p is None:
            continue
        wait = delay if delays is None else max(delays[i], 0.0)
        lock = p.get("lock", "")
        member = pass_lock_of(pass_class, p["args"]) if lock and pass_class else ""
        records.append(PushRecord(p["queue"], at, lock, lock_ttl, encode(p, limit), wait, member))
        jids.append((i, p["jid"]))
    return records, jids


def _build_records(
    job_class: JobClass, template: PayloadTemplate, args_list: Sequence[Sequence[Any]], names: list[str],
    lock_ttl: int, now: float, shown: float, at: float, delay: float, delays: Sequence[float] | None,
    limit: int,
) -> tuple[list[PushRecord], list[tuple[int, str]]]:
    """The fast path (no middleware): payload bytes from the template's pre-encoded
    parts (:meth:`PayloadTemplate.assemble`), the same bytes as the reference path's
    ``encode(template.reference(...))``; records carry ``at`` / ``delay`` (or each
    job's ``delays``) for the script, ``shown`` only stamps the payloads."""
    name = job_class.job_name
    dumps = orjson.dumps
    queue, head, mid, lock_open = template.queue, template.head, template.mid, template.LOCK_OPEN
    created = template.created(now)
    ready = template.ready(now)
    later = created + template.at_field(shown) if shown else ready
    digest = job_class.lock_digest
    pass_class = pass_class_of(job_class) if lock_ttl else ""
    ids = os.urandom(12 * len(args_list)).hex()
    records: list[PushRecord] = []
    jids: list[tuple[int, str]] = []
    arity = job_class.arity()
    for i, args in enumerate(args_list):
        args = list(args)
        check_args(args, name, names, arity)
        jid = ids[24 * i : 24 * i + 24]
        wait = delay
        if delays is None:
            stamps = later
        else:
            wait = delays[i] if delays[i] > 0 else 0.0
            stamps = created + template.at_field(now + wait) if wait else ready
        lock = ""
        if lock_ttl:
            lock = digest(queue, args)
            stamps += lock_open + lock.encode() + b'"'
        # template.assemble(jid, dumps(args), stamps, lock), inlined: two calls per job
        # cost a fifth of building a payload
        data = head + jid.encode() + mid + dumps(args) + stamps + b"}"
        if len(data) > limit:
            raise PayloadTooLarge(
                f"payload of {name!r} is {len(data)} bytes, over the max_payload_bytes limit of {limit}"
            )
        member = pass_lock_of(pass_class, args) if pass_class else ""
        records.append(PushRecord(queue, at, lock, lock_ttl, data, wait, member))
        jids.append((i, jid))
    return records, jids
