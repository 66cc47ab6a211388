"""Operator actions: what ``reconcile disable``/``enable``, ``flush`` and ``quarantine
release`` do, as functions over :mod:`reconcile.store` (the truth) and
:mod:`reconcile.broker` (the copy in Redis). The CLI parses arguments, calls one of
these and prints the result; nothing here prints or exits.

Contracts:

* :func:`set_switch` writes PostgreSQL first; the Redis mirror is refreshed after,
  and a Redis failure there is reported, not raised (schedulers refresh the mirror
  every ``switch_cache_seconds``);
* :func:`flush` keeps the epoch sentinel, so running schedulers do not take the
  planned flush for a Redis loss, and makes every pass schedule due before running
  those it can claim;
* :func:`release_quarantined` releases each key as given and, when the job class is
  known, in its canonical form too (an entry written before keys were canonical may
  hold the form given).
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from .broker import get_broker
from .config import Settings
from .job import Job
from .payload import loads_lenient
from .scheduler.passes import PassResult
from .scheduler.schedule_rows import CRON_PREFIX, job_of_row, partition_of
from .scheduler.service import Scheduler
from .store import quarantine, schedules, switches
from .store.engine import get_engine


def operator() -> str | None:
    """Who runs this command, as ``user@host`` (None when the user cannot be told: a
    container without a passwd entry and no ``USER``)."""
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return None


def fire_schedule(settings: Settings, name: str) -> bool:
    """Make the schedule of job ``name`` due now (its reconcile pass, or its cron
    enqueue), so the next scheduler tick fires it, under the usual tick claim (one
    scheduler fires it once). Every partition of a partitioned pass is made due. False
    when the job has no schedule row."""
    engine = get_engine(settings)
    rows = {s.name for s in schedules.list_schedules(engine)}
    wanted = [r for r in rows if r == CRON_PREFIX + name or (
        not r.startswith(CRON_PREFIX) and partition_of(r).job == name)]
    if not wanted:
        return False
    schedules.trigger_now(engine, wanted)
    return True


def known_job_names(settings: Settings) -> set[str]:
    """The job classes PostgreSQL knows by their full names, without importing the app:
    every class with a schedule row (ReconciledJobs, cron jobs) or a kill switch. What
    the CLI checks a job name against when no app module is given."""
    engine = get_engine(settings)
    names = {job_of_row(s.name) for s in schedules.list_schedules(engine)}
    return names | set(switches.all_switches(engine))


@dataclass(frozen=True)
class SwitchResult:
    """What :func:`set_switch` did: the job's full name, and the Redis error that left
    the mirror stale (None: mirrored)."""

    name: str
    mirror_error: redis.RedisError | None = None


def set_switch(settings: Settings, name: str, enabled: bool, reason: str,
               by: str | None = None) -> SwitchResult:
    """Turn job ``name``'s kill switch off (``enabled`` False) or on, durably in
    PostgreSQL with ``reason`` and ``by`` (who: ``user@host``), then replace the Redis
    mirror plain-job workers read with every disabled class."""
    engine = get_engine(settings)
    switches.set_enabled(engine, name, enabled, reason, by)
    disabled = {n: s.reason or "" for n, s in switches.all_switches(engine).items() if not s.enabled}
    try:
        get_broker(settings).mirror_switches(disabled)
    except redis.RedisError as exc:
        return SwitchResult(name, exc)
    return SwitchResult(name)


@dataclass
class FlushResult:
    """What :func:`flush` did: Redis keys deleted, the passes run here, and how many
    pass schedules were claimed by other schedulers (made due, run there)."""

    deleted: int
    results: list[PassResult] = field(default_factory=list)
    elsewhere: int = 0


def flush(settings: Settings) -> FlushResult:
    """Delete every Redis key of the namespace except the epoch sentinel, make every
    pass schedule in PostgreSQL due, and run the passes of the imported classes that
    this process can claim (the others are run by the schedulers that hold them).
    Plain jobs in Redis are lost; ReconciledJob work is re-derived."""
    sched = Scheduler(settings)
    # the epoch sentinel is kept: this function makes every pass due itself, so running
    # schedulers must not take the flush for an unplanned Redis loss (an INCIDENT)
    deleted = get_broker(settings).flush_namespace(keep_epoch=True)
    sched.flushed_by_operator()
    sched.run_once(trigger="flush")
    passes = len([n for n in sched.classes if not n.startswith(CRON_PREFIX)])
    return FlushResult(deleted, list(sched.results), max(0, passes - len(sched.results)))


def parse_key(text: str) -> list[Any]:
    """A key as typed on the command line: a JSON array (``[7,"eu"]``), a JSON scalar
    (``42``: one column) or, when it is not JSON, the text itself."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return value if isinstance(value, list) else [value]


def release_quarantined(settings: Settings, job: str, keys: Sequence[Sequence[Any]],
                        job_class: type[Job] | None = None) -> int:
    """Release ``keys`` of ``job`` from quarantine, so passes enqueue them again;
    returns how many entries were released. With ``job_class``, each key's canonical
    form is released too ("42" and 42 name one row); a key that has none raises
    :class:`~reconcile.errors.InvalidKey`."""
    wanted = [list(k) for k in keys]
    if job_class is not None:
        wanted += [c for c in (job_class.canonical_args(k) for k in wanted) if c not in wanted]
    released = quarantine.release_returning(get_engine(settings), job, wanted)
    drop_dead_records(settings, released)
    return len(released)


def release_all_quarantined(settings: Settings, job: str | None) -> int:
    """Release every quarantined key (of ``job``, if given); returns how many. Their
    dead records go with them, as for :func:`release_quarantined`."""
    released = quarantine.release_returning(get_engine(settings), job, None)
    drop_dead_records(settings, released)
    return len(released)


def drop_dead_records(settings: Settings, entries: Sequence[quarantine.Entry]) -> int:
    """Remove the dead records of released quarantine entries (issue 13, item 8): a
    released key gets a new delivery from the next pass, and its old death must not
    stay in the dead set as if it were still unresolved. Each dead record of the same
    class and key goes (one ``ZSCAN`` of the dead set per class, matching its class and
    args bytes; the dead set is bounded by ``dead_max_jobs``); returns how many."""
    if not entries:
        return 0
    broker = get_broker(settings)
    by_job: dict[str, set[str]] = {}
    for e in entries:
        by_job.setdefault(e.job, set()).add(json.dumps(list(e.key), separators=(",", ":")))
    removed = 0
    for job, keys in by_job.items():
        needle = b'"class":' + json.dumps(job).encode() + b',"args":'
        doomed: list[tuple[bytes, str]] = []
        for rows in broker.set_scan("dead", containing=needle):
            for member, _score in rows:
                record = loads_lenient(member)
                args = json.dumps(record.get("args"), separators=(",", ":"))
                if record.get("class") == job and args in keys:
                    doomed.append((member, ""))
        removed += sum(broker.set_delete("dead", doomed))
    return removed
