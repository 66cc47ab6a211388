"""Inspection: what Redis holds right now (queues, sets, processes, counters), the
per-class pass state PostgreSQL holds (:func:`classes`), and where one job is
(:func:`job`).

``status()`` is what ``reconcile status --json`` prints. Its shape (documented in
``docs/cli.md``)::

    {
      "namespace": "reconcile",
      "queues": [{"name": "default", "size": 12, "latency": 0.84}],
      "scheduled": 3, "retry": 1, "dead": 0, "in_flight": 10,
      "processes": [{"id": "host:123:ab12cd", "hostname": "host", "pid": 123,
                     "queues": ["default"], "concurrency": 10, "busy": 7,
                     "quiet": false, "alive": true, "leased": 10,
                     "started_at": 1732357077.1, "beat": 1732357101.5}],
      "counters": {"processed": 1042, "failed": 3, "already_done": 17,
                   "lock_busy": 2, "db_unavailable": 0, "disabled": 0, "held": 0}
    }

``latency`` is the age in seconds of the oldest job in the queue (0 when empty).

Bad bytes never fail the document: a value that cannot be what it should be (a queue
name that is not UTF-8, a process ``pid`` that is not a number, a process record that
is not a hash, a timestamp that is not a finite epoch time, a counter that is not an
integer) is replaced by a neutral value (the name decoded with backslash escapes,
``None``, ``0``) and shown as it is stored in an ``"invalid"`` object on its entry
(``{"pid": "'x'"}``: field -> ``repr`` of the raw value; for counters, a top-level
``"invalid_counters"``). Entries without a problem have no ``"invalid"`` key.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from .broker import Broker, get_broker
from .config import Settings
from .payload import loads_lenient

MAX_EPOCH = 253_402_300_799.0
"""9999-12-31 23:59:59 UTC: the last time a status timestamp may be."""


def _time(value: Any) -> float | None:
    """``value`` as an epoch time, or None when it is not one (see the module docs)."""
    if isinstance(value, bytes | str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    stamp = float(value)
    return stamp if math.isfinite(stamp) and 0 <= stamp <= MAX_EPOCH else None


def _age(raw: bytes | None, now: float) -> tuple[float, Any]:
    """Age of the job ``raw`` (0 for none), and its timestamp when that is not valid."""
    if raw is None:
        return 0.0, None
    job = loads_lenient(raw)
    # a compact pass payload carries its enqueue time as "pl" or "p" (reconcile.payload)
    stamp = job.get("enqueued_at") or job.get("at") or job.get("created_at") or job.get("pl") or job.get("p")
    if stamp is None:
        return 0.0, None
    valid = _time(stamp)
    if valid is None:
        return 0.0, stamp
    return max(0.0, now - valid), None


def _text(raw: bytes) -> tuple[str, bool]:
    try:
        return raw.decode(), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), False


def _scheduler(owner: bytes, raw: bytes, alive: bool, server_now: float) -> dict[str, Any]:
    """One scheduler record: its id, whether it beats, seconds since its last beat
    (Redis server clock), and what it reported (host, pid, started_at, schedules,
    passes_running, round_ok_ago); a record that is not JSON keeps its text."""
    ident, _ = _text(owner)
    entry: dict[str, Any] = {"id": ident, "alive": alive}
    try:
        info = json.loads(raw)
        if not isinstance(info, dict):
            raise ValueError("not an object")
    except ValueError:
        entry["invalid"] = {"record": repr(raw[:200])}
        return entry
    beat = info.pop("beat", None)
    entry["last_beat_ago"] = round(server_now - beat, 3) if isinstance(beat, (int, float)) else None
    return {**entry, **{k: info.get(k) for k in (
        "host", "pid", "started_at", "schedules", "passes_running", "round_ok_ago")}}


def _process(pid: bytes, info: dict[bytes, bytes] | str, alive: bool, leased: int) -> dict[str, Any]:
    invalid: dict[str, str] = {}
    ident, ok = _text(pid)
    if not ok:
        invalid["id"] = repr(pid)
    fields: dict[str, str] = {}
    if isinstance(info, str):
        invalid["record"] = info  # not a hash: Redis's error says what it is
    else:
        for k, v in info.items():
            name, _ = _text(k)
            fields[name], good = _text(v)
            if not good:
                invalid[name] = repr(v)

    def number(name: str, kind: type[int] | type[float], default: Any) -> Any:
        if name not in fields:
            return default
        try:
            value = kind(fields[name])
        except ValueError:
            value = None
        if kind is float:
            value = _time(value)
        if value is None:
            invalid[name] = repr(fields[name])
            return default
        return value

    out: dict[str, Any] = {
        "id": ident,
        "hostname": fields.get("hostname"),
        "pid": number("pid", int, None),
        "queues": fields["queues"].split(",") if fields.get("queues") else [],
        "concurrency": number("concurrency", int, 0),
        "busy": number("busy", int, 0),
        "quiet": fields.get("quiet") == "1",
        "alive": alive,
        "leased": leased,
        "started_at": number("started_at", float, None),
        "beat": number("beat", float, None),
    }
    if invalid:
        out["invalid"] = invalid
    return out


def status(settings: Settings | None = None, broker: Broker | None = None,
           include_classes: bool = True) -> dict[str, Any]:
    """A snapshot of the namespace, in a handful of round trips; never fails on what
    Redis holds (see the module docs). With a database configured and
    ``include_classes``, also ``classes``: per ReconciledJob class, its last pass, next
    tick, switch and quarantine size (:func:`classes`; four PostgreSQL queries)."""
    broker = broker or get_broker(settings)
    now = time.time()
    queues = []
    for raw, size, oldest in broker.queue_stats_raw():
        name, ok = _text(raw)
        age, bad_stamp = _age(oldest, now)
        entry: dict[str, Any] = {"name": name, "size": size, "latency": round(age, 3)}
        invalid = {} if ok else {"name": repr(raw)}
        if bad_stamp is not None:
            invalid["oldest_enqueued_at"] = repr(bad_stamp)
        if invalid:
            entry["invalid"] = invalid
        queues.append(entry)
    procs = [_process(*record) for record in broker.process_records()]
    server_now, records = broker.scheduler_records()
    schedulers = [_scheduler(owner, raw, alive, server_now) for owner, raw, alive in records]
    counters: dict[str, int] = {}
    bad_counters: dict[str, str] = {}
    for name, value in broker.counters_raw().items():
        try:
            counters[name] = int(value or 0)
        except ValueError:
            counters[name] = 0
            bad_counters[name] = repr(value)
    doc = {
        "namespace": broker.settings.namespace,
        "queues": queues,
        **broker.set_sizes(),
        **broker.due_sizes(),
        "in_flight": sum(p["leased"] for p in procs),
        "processes": procs,
        "schedulers": schedulers,
        "schedulers_alive": sum(1 for s in schedulers if s["alive"]),
        "counters": counters,
    }
    if bad_counters:
        doc["invalid_counters"] = bad_counters
    return with_classes(doc, broker.settings) if include_classes else doc


def dead_jobs(settings: Settings | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest dead jobs, decoded leniently (malformed ones show their ``raw`` text)."""
    broker = get_broker(settings)
    out = []
    for raw, score in broker.set_entries("dead", 0, limit - 1):
        job = loads_lenient(raw)
        job.setdefault("failed_at", score)
        out.append(job)
    return out


def job(jid: str, settings: Settings | None = None) -> dict[str, Any]:
    """Where job ``jid`` is right now, in one bounded Redis call (the jid index):
    queued (which queue, at which position), scheduled, retrying, dead (with its
    traceback and, for a ReconciledJob, its quarantine entry), running (which process,
    for how long) or unknown. The shape is :func:`reconcile.whereis.job`'s
    (docs/cli.md, "reconcile job"); ValueError for a string that cannot be a jid."""
    from .whereis import job as locate_job

    return locate_job(jid, settings)


def classes(settings: Settings | None = None) -> list[dict[str, Any]]:
    """Per ReconciledJob class of the app (and every class PostgreSQL has a schedule,
    a run or a switch for): its last pass, next tick, switch and quarantine size, read
    from PostgreSQL in four queries. The shape (docs/cli.md, "reconcile status")::

        {"class": "shop.jobs.ShipOrder", "schedule": "every 60s", "next_tick": 1732357140.0,
         "enabled": true, "disabled_reason": null, "quarantined": 2,
         "last_pass": {"started_at": 1732357080.2, "trigger": "tick", "found": 12,
                       "enqueued": 10, "already_queued": 2, "quarantined": 0, "deferred": 0,
                       "disabled": false, "duration_ms": 41, "error": null,
                       "finished_at": 1732357080.3} | null}
    """
    from .reconciled import ReconciledJob
    from .registry import all_classes
    from .store import quarantine, runs, schedules, switches
    from .store.engine import get_engine

    engine = get_engine(settings)
    last = runs.last_runs(engine)
    rows = {s.name: s for s in schedules.list_schedules(engine) if s.kind == "pass"}
    switch = switches.all_switches(engine)
    held = quarantine.counts(engine)
    names = {n for n, c in all_classes().items() if issubclass(c, ReconciledJob)}
    names |= set(last) | set(rows) | set(held) | {n for n, sw in switch.items() if not sw.enabled}
    out = []
    for name in sorted(names):
        run, row, sw = last.get(name), rows.get(name), switch.get(name)
        out.append({
            "class": name,
            "schedule": row.spec if row else None,
            "next_tick": row.next_run_at.timestamp() if row else None,
            "enabled": sw is None or sw.enabled,
            "disabled_reason": sw.reason if sw is not None and not sw.enabled else None,
            "quarantined": held.get(name, 0),
            "last_pass": None if run is None else {
                "started_at": run.started_at.timestamp(), "trigger": run.trigger,
                "found": run.found, "enqueued": run.enqueued, "already_queued": run.already_queued,
                "quarantined": run.quarantined, "deferred": run.deferred, "disabled": run.disabled,
                "duration_ms": run.duration_ms, "error": run.error,
                "finished_at": run.finished_at.timestamp() if run.finished_at else None,
            },
        })
    return out


def with_classes(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """``doc`` (a :func:`status` document) with ``classes`` (:func:`classes`) when a
    database is configured (``database_url`` set other than by default) or a
    ReconciledJob class is registered; a database that cannot be read gives
    ``classes: null`` and ``classes_error`` (the Redis half of the status stands on
    its own). A plain-jobs deployment on the default URL is not asked about a
    database it does not use."""
    from .reconciled import ReconciledJob
    from .registry import all_classes

    configured = bool(settings.database_url) and settings.source_of("database_url") != "default"
    if not configured and not any(issubclass(c, ReconciledJob) for c in all_classes().values()):
        return doc
    try:
        return {**doc, "classes": classes(settings)}
    except Exception as exc:
        from .config import scrub

        return {**doc, "classes": None, "classes_error": scrub(f"{type(exc).__name__}: {exc}", settings)}
