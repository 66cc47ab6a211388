"""The dashboard's pages: each takes the request's view and returns (title, body).

Data comes from the owners: :mod:`reconcile.api` and the broker for Redis,
:mod:`reconcile.store` for PostgreSQL, :mod:`reconcile.sets` for the buttons of the sets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from ..api import status
from ..broker import Broker
from ..config import Settings
from ..payload import loads_lenient
from .html import Raw, clip, e, form, table, when

PAGE_ROWS = 100
"""Rows shown on a queue, set or dead-set page (newest or next first)."""


@dataclass(frozen=True)
class View:
    """What a page needs: settings, broker, where the dashboard is mounted, the query."""

    settings: Settings
    broker: Broker
    root: str
    query: dict[str, str]
    read_only: bool

    def url(self, path: str, **params: str) -> str:
        return self.root + path + ("?" + urlencode(params) if params else "")


def _job(raw: bytes) -> dict[str, Any]:
    job = loads_lenient(raw)
    return job if isinstance(job, dict) else {"raw": str(job)}


def overview(v: View) -> tuple[str, Raw]:
    doc = status(v.settings, v.broker)
    queues = table(
        ["queue", "size", "latency (s)"],
        [(Raw(f'<a href="{e(v.url("/queue", name=q["name"]))}">{e(q["name"])}</a>'),
          f'{q["size"]:,}', f'{q["latency"]:.3f}') for q in doc["queues"]],
        empty="no queue yet",
    )
    sets = table(
        ["set", "size"],
        [(Raw(f'<a href="{e(v.url("/" + name))}">{e(name)}</a>'), f"{doc[name]:,}")
         for name in ("scheduled", "retry", "dead")],
    )
    procs = table(
        ["process", "state", "busy", "leased", "queues", "started", "last beat"],
        [(p["id"], "quiet" if p["quiet"] else ("alive" if p["alive"] else "dead (not reaped yet)"),
          f'{p["busy"]}/{p["concurrency"]}', p["leased"], ",".join(p["queues"]),
          when(p["started_at"]), when(p["beat"])) for p in doc["processes"]],
        empty="no worker process registered",
    )
    counters = table(["counter", "value"], [(k, f"{n:,}") for k, n in doc["counters"].items()])
    body = (f"<h3>Queues</h3>{queues}<h3>Sets</h3>{sets}<p>In flight: {doc['in_flight']:,}</p>"
            f"<h3>Processes</h3>{procs}<h3>Counters</h3>{counters}")
    return "Overview", Raw(body)


def queue(v: View) -> tuple[str, Raw]:
    name = v.query.get("name", "")
    rows = [(j.get("jid"), j.get("class"), clip(j.get("args")), when(j.get("enqueued_at")))
            for j in map(_job, v.broker.queue_entries(name, PAGE_ROWS))]
    return f"Queue {name}", Raw(f"<p>Next {PAGE_ROWS} jobs, next first.</p>"
                                + table(["jid", "class", "args", "enqueued"], rows, "empty"))


def scheduled_set(which: str) -> Callable[[View], tuple[str, Raw]]:
    """The page of the ``scheduled`` or ``retry`` set, with run-now and delete buttons."""
    def page(v: View) -> tuple[str, Raw]:
        rows = []
        for raw, score in v.broker.set_entries(which, 0, PAGE_ROWS - 1):
            j = _job(raw)
            jid = str(j.get("jid") or "")
            actions = Raw("")
            if not v.read_only and jid:
                actions = Raw(form(v.url(f"/{which}/run"), "run now", {"jid": jid})
                              + form(v.url(f"/{which}/delete"), "delete", {"jid": jid}))
            rows.append((jid or "-", j.get("class"), clip(j.get("args")), when(score),
                         clip(j.get("error_message") or ""), actions))
        title = "Scheduled" if which == "scheduled" else "Retries"
        bulk = ""
        if not v.read_only:
            bulk = (form(v.url(f"/{which}/run"), "run all now", {"all": "1"}, f"Run every {which} job now?")
                    + form(v.url(f"/{which}/delete"), "delete all", {"all": "1"},
                           f"Delete every {which} job?"))
        return title, Raw(f"<p>First {PAGE_ROWS}, soonest first. Run now moves a job to the back "
                          f"of its queue; delete also releases its uniqueness lock.</p>{bulk}"
                          + table(["jid", "class", "args", "runs", "last error", ""], rows))
    return page


def dead(v: View) -> tuple[str, Raw]:
    rows = []
    for raw, score in v.broker.set_entries("dead", 0, PAGE_ROWS - 1):
        j = _job(raw)
        jid = str(j.get("jid") or "")
        actions = Raw("")
        if not v.read_only and jid:
            actions = Raw(form(v.url("/dead/retry"), "retry", {"jid": jid})
                          + form(v.url("/dead/delete"), "delete", {"jid": jid}))
        rows.append((jid or "-", j.get("class") or "-", clip(j.get("args")), when(score),
                     f'{j.get("error_class")}: {clip(j.get("error_message") or "")}', actions))
    bulk = ""
    if not v.read_only:
        bulk = (form(v.url("/dead/retry"), "retry all", {"all": "1"}, "Retry every dead job?")
                + form(v.url("/dead/delete"), "delete all", {"all": "1"}, "Delete every dead job?"))
    return "Dead jobs", Raw(
        f"<p>Newest {PAGE_ROWS} first. A retry gives the job one more attempt at the back "
        f"of its queue (<code>reconcile dead retry</code>).</p>{bulk}"
        + table(["jid", "class", "args", "died", "error", ""], rows))


def quarantine(v: View) -> tuple[str, Raw]:
    from ..store import quarantine as q
    from ..store.engine import get_engine

    rows = []
    entries = q.list_entries(get_engine(v.settings))
    for entry in entries[:PAGE_ROWS]:
        key = json.dumps(list(entry.key))
        action = Raw("") if v.read_only else form(
            v.url("/quarantine/release"), "release", {"job": entry.job, "key": key})
        rows.append((entry.job, key, entry.quarantined_at.strftime("%Y-%m-%d %H:%M:%S"),
                     f"{entry.error_class}: {clip(entry.error_message or entry.reason)}", action))
    return "Quarantined keys", Raw(
        f"<p>{len(entries):,} keys of ReconciledJobs that died (newest {PAGE_ROWS} shown); "
        "passes skip them until released (<code>reconcile quarantine release</code>).</p>"
        + table(["job", "key", "since", "error", ""], rows))


def runs(v: View) -> tuple[str, Raw]:
    from ..store.engine import get_engine
    from ..store.runs import recent_runs

    rows = [(r.started_at.strftime("%Y-%m-%d %H:%M:%S"), r.job, r.trigger, r.found, r.enqueued,
             r.already_queued, r.quarantined,
             "running" if r.finished_at is None else f"{r.duration_ms} ms",
             "disabled" if r.disabled else clip(r.error or ""))
            for r in recent_runs(get_engine(v.settings), limit=PAGE_ROWS)]
    return "Reconcile passes", Raw(table(
        ["started", "job", "trigger", "found", "enqueued", "already queued", "quarantined",
         "took", "note"], rows))
