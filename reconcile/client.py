"""The enqueue path: arguments -> payload -> client middleware -> one Lua call per batch.

``enqueue`` is what ``perform_async``, ``perform_in``, ``perform_at``, ``perform_bulk``
and ``set(...)`` all call. Contracts:

* arguments are checked before anything is written; a non-JSON-native argument raises
  :class:`~reconcile.errors.ArgumentError` naming it, and a payload over
  ``max_payload_bytes`` raises :class:`~reconcile.errors.PayloadTooLarge`; in a bulk
  call every job is checked first, so a bad one writes nothing;
* a job rejected by client middleware, or dropped because its uniqueness lock is held,
  yields ``None`` in place of its jid;
* jobs are pushed ``bulk_batch_size`` (default 1000) per round trip.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from . import middleware
from .broker import PushRecord, get_broker
from .config import get_settings
from .payload import check_args, encode, new_jid

if TYPE_CHECKING:
    from .job import Job


class Interceptor(Protocol):
    """Test-mode hook (see :mod:`reconcile.testing`): receives payloads instead of Redis."""

    def intercept(self, job_class: type[Job], payloads: list[dict[str, Any]]) -> None: ...


_interceptor: Interceptor | None = None


def set_interceptor(interceptor: Interceptor | None) -> Interceptor | None:
    """Install (or remove, with None) the test-mode hook; returns the previous one."""
    global _interceptor
    previous, _interceptor = _interceptor, interceptor
    return previous


def unique_digest(name: str, queue: str, args: Sequence[Any]) -> str:
    """Uniqueness identity of a job: class, queue and arguments (key order ignored)."""
    body = orjson.dumps([name, queue, list(args)], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def enqueue(
    job_class: type[Job],
    args_list: Sequence[Sequence[Any]],
    *,
    options: dict[str, Any] | None = None,
    at: float = 0.0,
    ats: Sequence[float] | None = None,
) -> list[str | None]:
    """Enqueue one job per entry of ``args_list``; returns jids (None where not enqueued).

    ``options`` override class options for these jobs: ``queue``, ``retry``,
    ``unique_for``, ``unique_until``. ``at`` is an epoch time; 0 or past means now.
    ``ats`` gives each job its own run-at instead (reconcile passes spread with jitter).
    """
    settings = get_settings()
    opts = job_class.options() if not options else {**job_class.options(), **options}
    queue: str = opts["queue"]
    name = job_class.job_name
    names = job_class.arg_names()
    unique_for = opts.get("unique_for")
    lock_ttl = int(unique_for * 1000) if unique_for else 0
    now = time.time()
    run_at = at if at > now else 0.0

    base: dict[str, Any] = {"retry": opts["retry"]}
    if lock_ttl:
        base["unique_until"] = opts.get("unique_until", "success")
    if run_at:
        base["at"] = run_at
    else:
        base["enqueued_at"] = now

    chain = middleware.client_middleware.items
    payloads: list[dict[str, Any] | None] = []
    for args in args_list:
        args = list(args)
        check_args(args, name, names)
        # "queue" then "jid" first: the Lua scripts read them with an anchored match.
        payload: dict[str, Any] = {
            "queue": queue, "jid": new_jid(), "class": name, "args": args, "created_at": now,
        }
        payload.update(base)
        if lock_ttl:
            payload["lock"] = job_class.lock_digest(queue, args)
        if chain:
            payload = middleware.run_client(chain, job_class, payload)  # type: ignore[assignment]
        payloads.append(payload)

    if _interceptor is not None:
        _interceptor.intercept(job_class, [p for p in payloads if p is not None])
        return [p["jid"] if p is not None else None for p in payloads]

    limit = settings.max_payload_bytes
    records: list[PushRecord] = []
    slots: list[int] = []
    for i, p in enumerate(payloads):
        if p is None:
            continue
        when = run_at if ats is None else ats[i]
        if ats is not None and when > now:
            p["at"] = when
            p.pop("enqueued_at", None)
        records.append(PushRecord(p["queue"], when, p.get("lock", ""), lock_ttl, encode(p, limit)))
        slots.append(i)

    jids: list[str | None] = [None] * len(payloads)
    broker = get_broker(settings)
    step = settings.bulk_batch_size
    for start in range(0, len(records), step):
        flags = broker.push(records[start : start + step], now)
        for j, ok in enumerate(flags):
            if ok:
                i = slots[start + j]
                jids[i] = payloads[i]["jid"]  # type: ignore[index]
    return jids
