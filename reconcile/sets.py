"""Operator actions on the scheduled, retry and dead sets (``reconcile dead``, the
dashboard's buttons). Jobs are chosen by jid, or all of them (``jids=None``),
optionally only those of one job class.

* :func:`retry_dead` follows Sidekiq's "retry now" from its dead set: the job goes to
  the back of its queue with its payload as it died (failure fields included),
  ``enqueued_at`` set to now and ``retry_count`` lowered by one, so it gets one more
  attempt: if that attempt fails it dies again (a job with retries left when it was
  killed gets them). Its uniqueness fields (``lock``, ``unique_until``) are dropped:
  the lock was released when the job died, and an ack must not release a lock a newer
  enqueue holds now.
* :func:`run_now` moves scheduled jobs, or jobs waiting for a retry, to their queues
  at once, unchanged but for ``enqueued_at`` (a retry keeps its count and its lock).
* :func:`delete` removes jobs from a set; a scheduled or retry job's uniqueness lock
  is released with it (a deleted ReconciledJob delivery must not keep its key
  "already queued" for the next pass).
* Records that are not a job (``InvalidPayload``: bytes that were never a valid
  payload, kept with an excerpt) cannot be moved; they are reported and left.
* Each job leaves its set and enters its queue (or is deleted) in one Lua call, and one
  already gone (moved or deleted by someone else meanwhile) is skipped: no job is
  pushed twice.

A dead :class:`~reconcile.ReconciledJob` is also quarantined in PostgreSQL: a retry
runs its key once now, but passes keep skipping the key until ``reconcile quarantine
release``, which is usually the better tool (the next pass re-derives the key if it is
still pending).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .broker import get_broker
from .config import Settings, get_settings
from .errors import PayloadError
from .payload import decode, dumps

SETS = ("scheduled", "retry", "dead")


@dataclass(frozen=True)
class SetEntry:
    """One member of a set: its exact bytes, score (run-at, or time of death) and
    parsed payload (None when it is not a job payload; ``reason`` then says why)."""

    member: bytes
    score: float
    payload: dict[str, Any] | None
    reason: str = ""

    @property
    def jid(self) -> str:
        return str(self.payload["jid"]) if self.payload else ""


@dataclass
class SetChange:
    """What an action did."""

    changed: int = 0
    """Jobs moved to their queue, or deleted."""
    not_found: list[str] = field(default_factory=list)
    """Jids asked for that are not in the set (or left it meanwhile)."""
    not_retryable: list[tuple[str, str]] = field(default_factory=list)
    """(excerpt, reason) of records that are not jobs; left in place."""


def entries(which: str = "dead", settings: Settings | None = None) -> list[SetEntry]:
    """Every member of set ``which`` (newest first for dead, soonest first otherwise)."""
    settings = settings or get_settings()
    out = []
    for member, score in get_broker(settings).set_entries(_check(which), 0, -1):
        try:
            payload: dict[str, Any] | None = decode(member, settings.max_payload_bytes)
            reason = ""
        except PayloadError as exc:
            payload, reason = None, str(exc)
        out.append(SetEntry(member, score, payload, reason))
    return out


def retry_dead(
    jids: Sequence[str] | None = None, *, job: str | None = None, settings: Settings | None = None
) -> SetChange:
    """Dead jobs back to their queues for one more attempt (see the module docs)."""
    return _move("dead", jids, job, settings, retry_payload)


def run_now(
    which: str, jids: Sequence[str] | None = None, *, job: str | None = None,
    settings: Settings | None = None,
) -> SetChange:
    """Scheduled or retry-set jobs to their queues now (see the module docs)."""
    if which not in ("scheduled", "retry"):
        raise ValueError(f"run_now takes 'scheduled' or 'retry', not {which!r} (dead: retry_dead)")
    return _move(which, jids, job, settings, now_payload)


def delete(
    which: str, jids: Sequence[str] | None = None, *, job: str | None = None,
    settings: Settings | None = None,
) -> SetChange:
    """Delete the chosen jobs of set ``which``; records that are not job payloads are
    chosen only by ``jids=None`` without ``job``."""
    settings = settings or get_settings()
    chosen, missing = _select(entries(which, settings), jids, job)
    members = [(e.member, str(e.payload.get("lock") or "") if e.payload and which != "dead" else "")
               for e in chosen]
    done = get_broker(settings).set_delete(which, members)
    out = SetChange(changed=sum(done), not_found=missing)
    out.not_found += [e.jid for e, ok in zip(chosen, done, strict=True) if not ok and e.payload]
    return out


def act(
    which: str, action: str, jids: Sequence[str] | None = None, *, job: str | None = None,
    settings: Settings | None = None,
) -> tuple[str, SetChange]:
    """The operator's action on set ``which``: ``"move"`` (:func:`retry_dead` for the
    dead set, :func:`run_now` for the others) or ``"delete"``. Returns the verb that
    says what was done ("retried", "queued", "deleted") and the change."""
    if action == "delete":
        return "deleted", delete(which, jids, job=job, settings=settings)
    if action != "move":
        raise ValueError(f"no action {action!r}: 'move' or 'delete'")
    if which == "dead":
        return "retried", retry_dead(jids, job=job, settings=settings)
    return "queued", run_now(which, jids, job=job, settings=settings)


def retry_payload(payload: dict[str, Any], now: float) -> bytes:
    """The payload a retried dead job is pushed with (see the module docs)."""
    job = {k: v for k, v in payload.items() if k not in ("lock", "unique_until")}
    job["enqueued_at"] = now
    count = job.get("retry_count")
    if isinstance(count, int):
        if count > 0:
            job["retry_count"] = count - 1
        else:
            # died at its first failure: the next failure counts as the first again
            del job["retry_count"]
    return dumps(job)


def now_payload(payload: dict[str, Any], now: float) -> bytes:
    """The payload a scheduled or retry-set job is pushed with to run now."""
    job = {k: v for k, v in payload.items() if k != "at"}
    job["enqueued_at"] = now
    return dumps(job)


def _check(which: str) -> str:
    if which not in SETS:
        raise ValueError(f"no set {which!r}: one of {', '.join(SETS)}")
    return which


def _select(
    all_entries: list[SetEntry], jids: Sequence[str] | None, job: str | None
) -> tuple[list[SetEntry], list[str]]:
    """The entries chosen by ``jids`` (None: all) and ``job``, and the jids not found."""
    chosen = [e for e in all_entries if job is None or (e.payload and e.payload["class"] == job)]
    if jids is None:
        return chosen, []
    wanted = set(jids)
    chosen = [e for e in chosen if e.jid in wanted]
    found = {e.jid for e in chosen}
    return chosen, [j for j in jids if j not in found]


def _move(
    which: str, jids: Sequence[str] | None, job: str | None, settings: Settings | None,
    rewrite: Callable[[dict[str, Any], float], bytes],
) -> SetChange:
    settings = settings or get_settings()
    chosen, missing = _select(entries(which, settings), jids, job)
    out = SetChange(not_found=missing)
    now = time.time()
    moves: list[tuple[bytes, str, bytes]] = []
    movable: list[SetEntry] = []
    for e in chosen:
        if e.payload is None:
            excerpt = e.member[:60].decode("utf-8", "replace")
            out.not_retryable.append((excerpt, f"not a job payload ({e.reason})"))
            continue
        moves.append((e.member, str(e.payload["queue"]), rewrite(e.payload, now)))
        movable.append(e)
    moved = get_broker(settings).set_move(which, moves)
    out.changed = sum(moved)
    # a job that left the set between our read and the move (another operator, a
    # promotion, a trim) was not pushed by us
    out.not_found += [e.jid for e, ok in zip(movable, moved, strict=True) if not ok]
    return out
