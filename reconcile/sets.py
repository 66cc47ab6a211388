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

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .broker import get_broker
from .config import Settings, get_settings
from .errors import PayloadError
from .payload import PASS_LOCKED, decode, dumps, pass_lock

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
    """Every member of set ``which`` (newest first for dead, soonest first otherwise).
    Reads the whole set: for inspection of small sets; the actions below never call it."""
    settings = settings or get_settings()
    return [_entry(m, sc, settings) for m, sc in get_broker(settings).set_entries(_check(which), 0, -1)]


def find(which: str, jid: str, settings: Settings | None = None) -> SetEntry | None:
    """The member of set ``which`` whose payload has ``jid``, or None: one ``ZSCAN``
    filtered by Redis (``MATCH`` on the jid), so its cost grows with the set's size,
    not with what is sent back."""
    settings = settings or get_settings()
    for batch in _chosen(which, [jid], None, None, settings, SetChange()):
        for entry in batch:
            if entry.jid == jid:
                return entry
    return None


def retry_dead(
    jids: Sequence[str] | None = None, *, job: str | None = None, settings: Settings | None = None,
    scores: Mapping[str, float] | None = None,
) -> SetChange:
    """Dead jobs back to their queues for one more attempt (see the module docs)."""
    return _move("dead", jids, job, settings, retry_payload, scores)


def run_now(
    which: str, jids: Sequence[str] | None = None, *, job: str | None = None,
    settings: Settings | None = None, scores: Mapping[str, float] | None = None,
) -> SetChange:
    """Scheduled or retry-set jobs to their queues now (see the module docs)."""
    if which not in ("scheduled", "retry"):
        raise ValueError(f"run_now takes 'scheduled' or 'retry', not {which!r} (dead: retry_dead)")
    return _move(which, jids, job, settings, now_payload, scores)


def delete(
    which: str, jids: Sequence[str] | None = None, *, job: str | None = None,
    settings: Settings | None = None, scores: Mapping[str, float] | None = None,
) -> SetChange:
    """Delete the chosen jobs of set ``which``; records that are not job payloads are
    chosen only by ``jids=None`` without ``job``."""
    settings = settings or get_settings()
    broker = get_broker(settings)
    out = SetChange()
    for chosen in _chosen(which, jids, job, scores, settings, out):
        members = [(e.member, _lock_of(e.payload) if e.payload and which != "dead" else "")
                   for e in chosen]
        done = broker.set_delete(which, members)
        out.changed += sum(done)
        if jids is not None:
            out.not_found += [e.jid for e, ok in zip(chosen, done, strict=True) if not ok and e.payload]
    return out


def _lock_of(payload: dict[str, Any]) -> str:
    """The uniqueness lock a job holds: its ``lock`` field, or the pass lock a compact
    pass payload (field ``pl``) implies."""
    if PASS_LOCKED in payload:
        return pass_lock(str(payload.get("class")),
                         orjson.dumps(payload.get("args"), option=orjson.OPT_SORT_KEYS))
    return str(payload.get("lock") or "")


def act(
    which: str, action: str, jids: Sequence[str] | None = None, *, job: str | None = None,
    settings: Settings | None = None, scores: Mapping[str, float] | None = None,
) -> tuple[str, SetChange]:
    """The operator's action on set ``which``: ``"move"`` (:func:`retry_dead` for the
    dead set, :func:`run_now` for the others) or ``"delete"``. Returns the verb that
    says what was done ("retried", "queued", "deleted") and the change.

    Cost: a jid given with its score (``scores[jid]``, as the dashboard's buttons send
    it) reads only the members at that score; a jid without one is looked for with a
    ``ZSCAN`` filtered by Redis, batch by batch; ``jids=None`` (all) reads and acts
    ``SET_BATCH`` members at a time. Nothing ever holds the whole set in memory."""
    if action == "delete":
        return "deleted", delete(which, jids, job=job, settings=settings, scores=scores)
    if action != "move":
        raise ValueError(f"no action {action!r}: 'move' or 'delete'")
    if which == "dead":
        return "retried", retry_dead(jids, job=job, settings=settings, scores=scores)
    return "queued", run_now(which, jids, job=job, settings=settings, scores=scores)


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


def _entry(member: bytes, score: float, settings: Settings) -> SetEntry:
    try:
        return SetEntry(member, score, decode(member, settings.max_payload_bytes))
    except PayloadError as exc:
        return SetEntry(member, score, None, str(exc))


def _chosen(
    which: str, jids: Sequence[str] | None, job: str | None, scores: Mapping[str, float] | None,
    settings: Settings, out: SetChange,
) -> Iterator[list[SetEntry]]:
    """The entries chosen by ``jids`` (None: all) and ``job``, in batches of at most
    about ``SET_BATCH`` (see :func:`act` for what each way of choosing reads). Jids
    not found are added to ``out.not_found`` once the batches are exhausted."""
    broker = get_broker(settings)
    _check(which)

    def keep(e: SetEntry) -> bool:
        return job is None or (e.payload is not None and e.payload["class"] == job)

    if jids is None:
        for rows in broker.set_scan(which):
            yield [e for e in (_entry(m, sc, settings) for m, sc in rows) if keep(e)]
        return
    wanted = dict.fromkeys(jids)
    found: set[str] = set()
    by_score: dict[float, list[str]] = {}
    for jid in wanted:
        score = (scores or {}).get(jid)
        if score is not None and not math.isnan(score):
            by_score.setdefault(score, []).append(jid)
    for score, at in by_score.items():
        needles = {jid: _needle(jid) for jid in at}
        at_score = ((member, score) for member in broker.set_members_at(which, score))
        batch = _matching(at_score, needles, keep, found, settings)
        if batch:
            yield batch
    # a jid whose score is not known, or not found at the score given (the button
    # of a page older than the member: report it gone rather than scan the set)
    rest = [j for j in wanted if j not in found and not any(j in at for at in by_score.values())]
    if rest:
        needles = {jid: _needle(jid) for jid in rest}
        # one jid: Redis filters the scan (MATCH); several: filter each batch here
        for rows in broker.set_scan(which, needles[rest[0]] if len(rest) == 1 else None):
            batch = _matching(rows, needles, keep, found, settings)
            if batch:
                yield batch
            if found.issuperset(rest):
                break
    out.not_found += [j for j in wanted if j not in found]


def _matching(rows: Iterable[tuple[bytes, float]], needles: dict[str, bytes],
              keep: Callable[[SetEntry], bool], found: set[str], settings: Settings) -> list[SetEntry]:
    """The entries of ``rows`` holding one of the jids of ``needles`` (a byte search
    first, so other members are never decoded) that ``keep`` accepts; adds their jids
    to ``found``."""
    batch: list[SetEntry] = []
    for member, score in rows:
        if any(n in member for n in needles.values()):
            e = _entry(member, score, settings)
            if e.jid in needles and keep(e):
                batch.append(e)
                found.add(e.jid)
    return batch


def _needle(jid: str) -> bytes:
    """The bytes a member holding ``jid`` contains (its JSON string, quotes excluded)."""
    return orjson.dumps(jid)[1:-1]


def _move(
    which: str, jids: Sequence[str] | None, job: str | None, settings: Settings | None,
    rewrite: Callable[[dict[str, Any], float], bytes], scores: Mapping[str, float] | None,
) -> SetChange:
    settings = settings or get_settings()
    broker = get_broker(settings)
    out = SetChange()
    for chosen in _chosen(which, jids, job, scores, settings, out):
        now = time.time()
        moves: list[tuple[bytes, str, bytes]] = []
        movable: list[SetEntry] = []
        for e in chosen:
            if e.payload is None:
                out.not_retryable.append((_excerpt(e.member), f"not a job payload ({e.reason})"))
                continue
            try:
                pushed = rewrite(e.payload, now)
            except orjson.JSONEncodeError as exc:  # e.g. arguments nested deeper than orjson writes
                out.not_retryable.append((_excerpt(e.member), f"cannot be re-encoded ({exc})"))
                continue
            moves.append((e.member, str(e.payload["queue"]), pushed))
            movable.append(e)
        moved = broker.set_move(which, moves)
        out.changed += sum(moved)
        # a job that left the set between our read and the move (another operator, a
        # promotion, a trim) was not pushed by us
        if jids is not None:
            out.not_found += [e.jid for e, ok in zip(movable, moved, strict=True) if not ok]
    return out


def _excerpt(member: bytes) -> str:
    return member[:60].decode("utf-8", "replace")
