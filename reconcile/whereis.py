"""Where is my job, and why is this key not done: ``reconcile job JID`` /
:func:`reconcile.api.job` and ``reconcile key CLASS KEY`` / ``ReconciledJob.status(key)``.

A job by jid is found through the broker's jid index in one bounded call
(:meth:`~reconcile.broker.Broker.locate`): plain jobs from their enqueue, every job
while it runs, retries or is dead. A ReconciledJob that a pass enqueued is not indexed
while it waits (the index costs a pass nothing); it is found by key, where the answer
starts from the truth in PostgreSQL:

* **pending?** the class's ``pending()`` restricted to the key, in its own transaction;
* **running?** a delivery holds the key's advisory lock (``pg_locks``);
* **in Redis?** its uniqueness lock (queued, scheduled or retrying; a retrying job's
  lock names its jid, which is then located);
* **quarantined?** its ``reconcile_quarantine`` row (reason, error, failures);
* **disabled?** its class's kill switch.

Both return JSON-ready dicts; their shapes are documented in ``docs/cli.md``
("reconcile job", "reconcile key"), and :func:`job_lines` / :func:`key_lines` render
them as the CLI's text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .broker import Broker, Location, get_broker
from .config import Settings, get_settings
from .payload import loads_lenient, pass_lock_member
from .registry import all_classes

if TYPE_CHECKING:
    from .reconciled import ReconciledJob

JID = re.compile(r"^[0-9A-Za-z]{1,64}$")
"""What a jid may look like (reconcile writes 24 hex characters)."""

_STATE = {"retry": "retrying", "deep": "queued", "stale": "unknown"}
"""locate.lua's states -> the states a caller sees (see :func:`job`)."""


def check_jid(jid: str) -> str:
    """``jid`` if it can be a jid, else ValueError naming it and what is allowed."""
    if not JID.match(jid):
        raise ValueError(f"{jid!r} is not a jid: a jid is 1-64 letters and digits (reconcile writes 24 hex)")
    return jid


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _job_fields(payload: bytes | None) -> dict[str, Any]:
    """What a job's bytes say about it: class, queue, args (or key), attempt, error."""
    if payload is None:
        return {}
    job = loads_lenient(payload)
    name = job.get("class")
    cls = all_classes().get(name) if isinstance(name, str) else None
    out: dict[str, Any] = {"class": job.get("class"), "queue": job.get("queue"), "args": job.get("args")}
    if cls is not None and cls.keyed:
        out["key"] = job.get("args")
    if "retry_count" in job:
        out["retry_count"] = job["retry_count"]
    for field in ("error_class", "error_message", "error_backtrace", "failed_at", "retried_at"):
        if field in job:
            out[field] = job[field]
    if "raw" in job and "class" not in job:
        out["raw"] = job["raw"]
    return out


def located(jid: str, loc: Location) -> dict[str, Any]:
    """The document of :func:`job` for what ``locate.lua`` found."""
    doc: dict[str, Any] = {"jid": jid, "state": _STATE.get(loc.state, loc.state), **_job_fields(loc.payload)}
    if loc.state == "queued":
        doc["queue"] = loc.queue
        doc["position"] = loc.position
        doc["queue_length"] = loc.length
    elif loc.state == "deep":
        doc["queue"] = loc.queue
        doc["position"] = None
        doc["queue_length"] = loc.length
        doc["note"] = ("queued further back than the oldest entries a lookup compares (or "
                       "moving between sets right now); its exact position is not searched")
    elif loc.state in ("scheduled", "retry"):
        doc["run_at"] = _round(loc.score)
        doc["runs_in"] = _round(max(0.0, (loc.score or 0.0) - loc.now))
    elif loc.state == "dead":
        doc["died_at"] = _round(loc.score)
    elif loc.state == "running":
        doc["process"] = loc.proc
        doc["lease"] = loc.field
        doc["started_at"] = _round(loc.since)
        doc["running_seconds"] = _round(max(0.0, loc.now - (loc.since or loc.now)))
    elif loc.state == "stale":
        doc["note"] = ("the jid index names a place this job has left (it moved meanwhile, "
                       "or ended); ask again")
    else:
        doc["note"] = ("not in Redis under this jid: it finished, was deleted, or Redis lost it; "
                       "a ReconciledJob enqueued by a pass is found by its key instead "
                       "(reconcile key CLASS KEY)")
    return doc


def job(jid: str, settings: Settings | None = None, broker: Broker | None = None,
        with_quarantine: bool = True) -> dict[str, Any]:
    """Where job ``jid`` is: ``state`` one of ``queued`` (``queue``, ``position``: 0 =
    the next to run, ``queue_length``), ``scheduled`` / ``retrying`` (``run_at``,
    ``runs_in``; ``retry_count``, ``error_*``), ``dead`` (``died_at``, ``error_*``
    with ``error_backtrace``), ``running`` (``process``, ``started_at``,
    ``running_seconds``) or ``unknown`` (``note`` says what that can mean). A dead
    ReconciledJob also carries ``quarantine`` (its key's entry, or None: released)."""
    check_jid(jid)
    settings = settings or get_settings()
    broker = broker or get_broker(settings)
    doc = located(jid, broker.locate(jid))
    if with_quarantine and doc["state"] == "dead" and "key" in doc:
        doc.update(dead_link(settings, all_classes()[doc["class"]], doc["key"]))  # type: ignore[arg-type]
    return doc


def quarantine_link(settings: Settings, job_name: str, key: Sequence[Any]) -> dict[str, Any] | None:
    """The quarantine entry a dead ReconciledJob record belongs to (None: released,
    or never quarantined), as the dead views show it; ``{"error": ...}`` when the
    database cannot be read."""
    from .store import quarantine
    from .store.engine import get_engine

    try:
        entry = quarantine.entry(get_engine(settings), job_name, list(key))
    except Exception as exc:  # the Redis answer stands without PostgreSQL
        return {"error": f"{type(exc).__name__}: {exc}"}
    return None if entry is None else quarantine_doc(entry)


def dead_link(settings: Settings, cls: type[ReconciledJob], args: Sequence[Any]) -> dict[str, Any]:
    """How a dead ReconciledJob record stands (issue 13, item 8): ``quarantine``, its
    key's entry (None: released or never quarantined), and ``resolved``: True when the
    key is no longer pending in PostgreSQL (a later delivery succeeded, or the row
    changed), so the record is history, not an open failure; None if unknown."""
    from .store.engine import get_engine
    from .store.pending import key_is_pending

    doc: dict[str, Any] = {"quarantine": quarantine_link(settings, cls.job_name, args), "resolved": None}
    try:
        canonical = cls.canonical_args(list(args))
        doc["resolved"] = not key_is_pending(get_engine(settings), cls().pending(),
                                             cls.key_codec().native(canonical))
    except Exception:  # a record whose key no longer fits, or no database: unknown
        pass
    return doc


def link_line(link: dict[str, Any]) -> str:
    """One line for :func:`dead_link`."""
    q = link["quarantine"]
    resolved = {True: "; resolved: the key is no longer pending", False: "; the key is still pending",
                None: ""}[link["resolved"]]
    if q:
        return quarantine_line(q) + resolved
    return "none (released, or never quarantined)" + resolved


def quarantine_doc(entry: Any) -> dict[str, Any]:
    """A quarantine entry as JSON: reason, error, failures (retries spent + 1) and the
    jid of the delivery that put it there (whose dead record it links to)."""
    payload = entry.payload or {}
    count = payload.get("retry_count")
    return {
        "reason": entry.reason, "error_class": entry.error_class, "error_message": entry.error_message,
        "failures": count + 1 if isinstance(count, int) and not isinstance(count, bool) else None,
        "jid": payload.get("jid"), "quarantined_at": entry.quarantined_at.timestamp(),
    }


def key_status(cls: type[ReconciledJob], key: Sequence[Any], settings: Settings | None = None,
               broker: Broker | None = None) -> dict[str, Any]:
    """Why ``key`` of ``cls`` is or is not done (see the module docs). ``key``: the
    key's values in order (a scalar for a one-column key is accepted); a value its
    column cannot take raises :class:`~reconcile.errors.InvalidKey` naming it.

    ``verdict`` sums it up in one of: ``done`` (not pending), ``running``,
    ``in_redis`` (queued, scheduled or retrying), ``quarantined``, ``disabled``,
    ``waiting_for_pass`` (pending, nothing in Redis: the next pass enqueues it)."""
    from .store import quarantine, switches
    from .store.engine import get_engine
    from .store.pending import key_is_pending, key_lock_holder

    settings = settings or get_settings()
    broker = broker or get_broker(settings)
    args = cls.canonical_args(list(key) if isinstance(key, list | tuple) else [key])
    name = cls.job_name
    engine = get_engine(settings)
    # the primary, not a read replica: the question is what the truth says now
    pending = key_is_pending(engine, cls().pending(), cls.key_codec().native(args))
    holder = key_lock_holder(engine, name, args)
    entry = quarantine.entry(engine, name, args)
    switch = switches.all_switches(engine).get(name)
    # a key a pass enqueued holds a pass lock (a member of its class's lock set, see
    # docs/redis-layout.md) rather than a lock key
    pass_class = cls.pass_lock_name()
    pass_lock = None
    if pass_class:  # the member as the pass wrote it
        pass_lock = (pass_class, pass_lock_member(args).decode())
    lock = broker.locate_lock(cls.lock_digest(cls.options()["queue"], args), pass_lock=pass_lock)
    redis_doc: dict[str, Any] = {"lock_ttl": None if lock.ttl_ms < 0 else round(lock.ttl_ms / 1000, 3)}
    if lock.ttl_ms == -1:
        redis_doc["lock_ttl"] = "forever"
    if lock.ttl_ms == -3:
        redis_doc["lock_ttl"] = "pass"
    if lock.location is not None and lock.jid is not None:
        redis_doc["job"] = located(lock.jid, lock.location)
    elif lock.ttl_ms != -2:
        redis_doc["job"] = {"state": "enqueued", "note": (
            "its uniqueness lock is held: queued or scheduled (a pass's jittered enqueue), "
            "or running; a pass's job is not indexed by jid")}
    doc: dict[str, Any] = {
        "class": name, "key": args, "pending": pending,
        "running": None if holder is None else {"backend_pid": holder[0], "since": _round(holder[1])},
        "redis": redis_doc,
        "quarantine": None if entry is None else quarantine_doc(entry),
        "disabled": bool(switch is not None and not switch.enabled),
        "disabled_reason": switch.reason if switch is not None and not switch.enabled else None,
    }
    doc["verdict"] = _verdict(doc, lock.ttl_ms != -2)
    return doc


def _verdict(doc: dict[str, Any], locked: bool) -> str:
    if doc["running"] is not None:
        return "running"
    if not doc["pending"]:
        return "done"
    if doc["quarantine"] is not None:
        return "quarantined"
    if doc["disabled"]:
        return "disabled"
    return "in_redis" if locked else "waiting_for_pass"


_VERDICTS = {
    "done": "done: not pending in PostgreSQL",
    "running": "running: a delivery holds its lock in PostgreSQL",
    "in_redis": "pending; in Redis",
    "quarantined": ("pending but quarantined: passes skip it until it is released "
                    "(reconcile quarantine release)"),
    "disabled": "pending but its class is disabled (reconcile enable)",
    "waiting_for_pass": "pending, not in Redis: the next pass enqueues it",
}


def job_lines(doc: dict[str, Any]) -> list[str]:
    """``reconcile job``'s text for a :func:`job` document."""
    state = doc["state"]
    head = f"{doc['jid']}: {state}"
    if state == "queued":
        where = f"position {doc['position']}" if doc.get("position") is not None else "position unknown"
        head += f" in {doc['queue']} ({where} of {doc['queue_length']}; 0 runs next)"
    elif state in ("scheduled", "retrying"):
        head += f", runs in {doc['runs_in']:.1f} s (at {doc['run_at']})"
    elif state == "running":
        head += f" on {doc['process']} for {doc['running_seconds']:.1f} s"
    elif state == "dead":
        head += f" since {doc['died_at']}"
    lines = [head]
    if doc.get("class"):
        lines.append(f"  class {doc['class']}  queue {doc.get('queue')}  args {doc.get('args')}")
    if "retry_count" in doc:
        lines.append(f"  retries so far: {doc['retry_count'] + 1}")
    if doc.get("error_class"):
        lines.append(f"  last error: {doc['error_class']}: {doc.get('error_message')}")
    if state == "dead" and doc.get("error_backtrace"):
        lines += ["  " + line for line in str(doc["error_backtrace"]).splitlines()]
    if "quarantine" in doc:
        lines.append("  quarantine: " + link_line(doc))
    if doc.get("note"):
        lines.append(f"  ({doc['note']})")
    return lines


def quarantine_line(q: dict[str, Any]) -> str:
    if "error" in q:
        return f"unknown (database: {q['error']})"
    failures = f", {q['failures']} failures" if q.get("failures") else ""
    return f"quarantined ({q['reason']}{failures}; {q.get('error_class')}: {q.get('error_message')})"


def key_lines(doc: dict[str, Any]) -> list[str]:
    """``reconcile key``'s text for a :func:`key_status` document."""
    lines = [f"{doc['class']} {doc['key']}: {_VERDICTS[doc['verdict']]}",
             f"  pending in PostgreSQL: {'yes' if doc['pending'] else 'no'}"]
    if doc["running"]:
        lines.append(f"  running: backend {doc['running']['backend_pid']} since {doc['running']['since']}")
    r = doc["redis"]
    if "job" in r:
        j = r["job"]
        if "jid" in j:
            first, *rest = job_lines(j)
            lines += ["  in Redis: " + first, *rest]
        else:
            held = ("a pass lock, held while its generation lives" if r["lock_ttl"] == "pass"
                    else f"lock expires in {r['lock_ttl']} s")
            lines.append(f"  in Redis: {j['state']} ({held}; {j['note']})")
    else:
        lines.append("  in Redis: no (no uniqueness lock)")
    lines.append("  quarantine: " + (quarantine_line(doc["quarantine"]) if doc["quarantine"] else "no"))
    lines.append("  switch: " + (f"disabled ({doc['disabled_reason']})" if doc["disabled"] else "enabled"))
    return lines
