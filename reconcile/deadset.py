"""Operator actions on the dead set: list, retry and delete dead jobs.

What ``reconcile dead list | retry | delete`` run. Jobs are chosen by jid, or all of
them (``jids=None``), optionally only those of one job class.

Retrying follows Sidekiq's "retry now" from its dead set:

* the job goes to the back of its queue with its payload as it died (failure fields
  included), ``enqueued_at`` set to now and ``retry_count`` lowered by one, so it gets
  one more attempt: if that attempt fails it dies again (a job with retries left when
  it was killed gets them);
* its uniqueness fields (``lock``, ``unique_until``) are dropped: the lock was released
  when the job died, and an ack must not release a lock a newer enqueue holds now;
* records that are not a job (``InvalidPayload``: bytes that were never a valid
  payload, kept with an excerpt) cannot be retried; they are reported and left;
* each job leaves the dead set and enters its queue in one Lua call, and one already
  gone (retried or deleted by someone else meanwhile) is skipped: no job is pushed
  twice.

A dead :class:`~reconcile.ReconciledJob` is also quarantined in PostgreSQL: a retry
runs its key once now, but passes keep skipping the key until ``reconcile quarantine
release``, which is usually the better tool (the next pass re-derives the key if it is
still pending).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .broker import get_broker
from .config import Settings, get_settings
from .errors import PayloadError
from .payload import decode, dumps


@dataclass(frozen=True)
class DeadEntry:
    """One member of the dead set: its exact bytes, time of death and parsed payload
    (None when it is not a job payload; ``reason`` then says why)."""

    member: bytes
    died_at: float
    payload: dict[str, Any] | None
    reason: str = ""

    @property
    def jid(self) -> str:
        return str(self.payload["jid"]) if self.payload else ""


@dataclass
class DeadSetChange:
    """What a retry or delete did."""

    changed: int = 0
    """Jobs retried (moved to their queue) or deleted."""
    not_found: list[str] = field(default_factory=list)
    """Jids asked for that are not in the dead set (or left it meanwhile)."""
    not_retryable: list[tuple[str, str]] = field(default_factory=list)
    """(jid or excerpt, reason) of records that cannot be retried; left in place."""


def entries(settings: Settings | None = None) -> list[DeadEntry]:
    """Every dead-set member, newest first (the set is bounded by ``dead_max_jobs``)."""
    settings = settings or get_settings()
    out = []
    for member, score in get_broker(settings).set_entries("dead", 0, -1):
        try:
            payload: dict[str, Any] | None = decode(member, settings.max_payload_bytes)
            reason = ""
        except PayloadError as exc:
            payload, reason = None, str(exc)
        out.append(DeadEntry(member, score, payload, reason))
    return out


def _select(
    all_entries: list[DeadEntry], jids: Sequence[str] | None, job: str | None
) -> tuple[list[DeadEntry], list[str]]:
    """The entries chosen by ``jids`` (None: all) and ``job``, and the jids not found."""
    chosen = [e for e in all_entries if job is None or (e.payload and e.payload["class"] == job)]
    if jids is None:
        return chosen, []
    wanted = set(jids)
    chosen = [e for e in chosen if e.jid in wanted]
    found = {e.jid for e in chosen}
    return chosen, [j for j in jids if j not in found]


def retry_payload(payload: dict[str, Any], now: float) -> bytes:
    """The payload a retried dead job is pushed with (see the module docstring)."""
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


def retry(
    jids: Sequence[str] | None = None, *, job: str | None = None, settings: Settings | None = None
) -> DeadSetChange:
    """Move the chosen dead jobs back to their queues (``jids=None``: all, of ``job``
    if given)."""
    settings = settings or get_settings()
    chosen, missing = _select(entries(settings), jids, job)
    out = DeadSetChange(not_found=missing)
    now = time.time()
    moves: list[tuple[bytes, str, bytes]] = []
    for e in chosen:
        if e.payload is None:
            excerpt = e.member[:60].decode("utf-8", "replace")
            out.not_retryable.append((excerpt, f"not a job payload ({e.reason})"))
            continue
        moves.append((e.member, str(e.payload["queue"]), retry_payload(e.payload, now)))
    moved = get_broker(settings).requeue_dead(moves)
    out.changed = sum(moved)
    # a job that left the dead set between our read and the move (another operator, a
    # trim) was not pushed by us
    by_member = {e.member: e.jid for e in chosen}
    out.not_found += [by_member[m] for (m, _, _), ok in zip(moves, moved, strict=True) if not ok]
    return out


def delete(
    jids: Sequence[str] | None = None, *, job: str | None = None, settings: Settings | None = None
) -> DeadSetChange:
    """Delete the chosen dead jobs (``jids=None``: all, of ``job`` if given). Records
    that are not job payloads are chosen only by ``jids=None`` without ``job``."""
    settings = settings or get_settings()
    chosen, missing = _select(entries(settings), jids, job)
    removed = get_broker(settings).remove_dead([e.member for e in chosen])
    return DeadSetChange(changed=removed, not_found=missing)

