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
from .html import Raw, bad, clip, e, form, table, when

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


def overview(v: View) -> tuple[str, Raw]:
    doc = status(v.settings, v.broker)
    queues = table(
        ["queue", "size", "latency (s)", ""],
        [(Raw(f'<a href="{e(v.url("/queue", name=q["name"]))}">{e(q["name"])}</a>'),
          f'{q["size"]:,}', f'{q["latency"]:.3f}', _invalid(q)) for q in doc["queues"]],
        empty="no queue yet",
    )
    sets = table(
        ["set", "size"],
        [(Raw(f'<a href="{e(v.url("/" + name))}">{e(name)}</a>'), f"{doc[name]:,}")
         for name in ("scheduled", "retry", "dead")],
    )
    procs = table(
        ["process", "state", "busy", "leased", "queues", "started", "last beat", ""],
        [(p["id"], "quiet" if p["quiet"] else ("alive" if p["alive"] else "dead (not reaped yet)"),
          f'{p["busy"]}/{p["concurrency"]}', p["leased"], ",".join(p["queues"]),
          when(p["started_at"]), when(p["beat"]), _invalid(p)) for p in doc["processes"]],
        empty="no worker process registered",
    )
    scheds = table(
        ["scheduler", "state", "last beat (s ago)", "passes running", "started", ""],
        [(s["id"], "alive" if s["alive"] else "DEAD",
          "?" if s.get("last_beat_ago") is None else f'{s["last_beat_ago"]:.0f}',
          ", ".join(s.get("passes_running") or []) or "-", when(s.get("started_at")), _invalid(s))
         for s in doc["schedulers"]],
        empty="no scheduler seen in the last day",
    )
    if not doc["schedulers_alive"]:
        scheds = Raw("<p><strong>No scheduler is alive</strong>: reconcile passes, cron jobs and "
                     "Redis-loss healing are stopped. Start <code>reconcile scheduler</code>.</p>"
                     + scheds)
    bad_counters = doc.get("invalid_counters", {})
    counters = table(["counter", "value"], [
        (k, bad(bad_counters[k], "not an integer") if k in bad_counters else f"{n:,}")
        for k, n in doc["counters"].items()])
    body = (f"<h3>Queues</h3>{queues}<h3>Sets</h3>{sets}<p>In flight: {doc['in_flight']:,}</p>"
            f"<h3>Processes</h3>{procs}<h3>Schedulers</h3>{scheds}<h3>Counters</h3>{counters}"
            f"{_classes(doc)}")
    return "Overview", Raw(body)


def _classes(doc: dict[str, Any]) -> Raw:
    """Per ReconciledJob class: last pass, next tick, switch, quarantine size."""
    if "classes" not in doc:
        return Raw("")
    if doc["classes"] is None:
        return Raw("<h3>Classes</h3><p>PostgreSQL could not be read: "
                   f"{e(doc.get('classes_error', ''))}</p>")

    def last(run: dict[str, Any] | None) -> str:
        if run is None:
            return "no pass yet"
        text = (f"{run['trigger']}: found {run['found']:,}, enqueued {run['enqueued']:,}, already "
                f"queued {run['already_queued']:,}, quarantined {run['quarantined']:,}, deferred "
                f"{run['deferred']:,}")
        if run["disabled"]:
            text += " (disabled)"
        return text + (f"; ERROR {run['error']}" if run["error"] else "")

    rows = [(c["class"], "enabled" if c["enabled"] else f"DISABLED: {c['disabled_reason'] or ''}",
             when(c["last_pass"]["started_at"]) if c["last_pass"] else "-",
             last(c["last_pass"]),
             "-" if not c["last_pass"] or c["last_pass"]["duration_ms"] is None
             else f"{c['last_pass']['duration_ms']:,} ms",
             when(c["next_tick"]) if c["next_tick"] else "-", f"{c['quarantined']:,}")
            for c in doc["classes"]]
    return Raw("<h3>Classes</h3>" + table(
        ["class", "switch", "last pass", "counts", "took", "next tick", "quarantined"], rows,
        empty="no ReconciledJob class"))


def _invalid(entry: dict[str, Any]) -> Raw:
    """The fields of a status entry that Redis holds in a form they cannot have
    (see :mod:`reconcile.api`), raw and marked; empty when there are none."""
    return Raw(" ".join(
        f'<span class="bad" title="not valid as stored">{e(name)}={e(clip(raw))}</span>'
        for name, raw in entry.get("invalid", {}).items()))


def queue(v: View) -> tuple[str, Raw]:
    name = v.query.get("name", "")
    # a compact pass payload's enqueue time is its "pl" or "p" (reconcile.payload)
    rows = [(j.get("jid"), j.get("class"), clip(j.get("args")),
             when(j.get("enqueued_at") or j.get("pl") or j.get("p")))
            for j in map(loads_lenient, v.broker.queue_entries(name, PAGE_ROWS))]
    return f"Queue {name}", Raw(f"<p>Next {PAGE_ROWS} jobs, next first.</p>"
                                + table(["jid", "class", "args", "enqueued"], rows, "empty"))


@dataclass(frozen=True)
class _SetPage:
    """What differs between the pages of the three sets."""

    title: str
    intro: str
    move: str  # the path of the action moving a job to its queue (see reconcile.sets.act)
    move_label: str
    move_all: str  # its bulk button, and its confirmation
    confirm: str
    when: str  # what a member's score is


SET_PAGES = {
    "dead": _SetPage(
        "Dead jobs", f"Newest {PAGE_ROWS} first. A retry gives the job one more attempt at the "
        "back of its queue (<code>reconcile dead retry</code>).",
        "retry", "retry", "retry all", "Retry every dead job?", "died"),
    "scheduled": _SetPage(
        "Scheduled", f"First {PAGE_ROWS}, soonest first. Run now moves a job to the back of its "
        "queue; delete also releases its uniqueness lock.",
        "run", "run now", "run all now", "Run every scheduled job now?", "runs"),
    "retry": _SetPage(
        "Retries", f"First {PAGE_ROWS}, soonest first. Run now moves a job to the back of its "
        "queue, its retry count kept; delete also releases its uniqueness lock.",
        "run", "run now", "run all now", "Run every retry now?", "runs"),
}


def set_page(which: str) -> Callable[[View], tuple[str, Raw]]:
    """The page of set ``which``, with a button per job (move it to its queue, or
    delete it) and for all of them."""
    spec = SET_PAGES[which]
    move, delete = f"/{which}/{spec.move}", f"/{which}/delete"

    def page(v: View) -> tuple[str, Raw]:
        rows = []
        for raw, score in v.broker.set_entries(which, 0, PAGE_ROWS - 1):
            j = loads_lenient(raw)
            jid = str(j.get("jid") or "")
            actions = Raw("")
            if not v.read_only and jid:
                # the score lets the action read only the members at it (reconcile.sets.act)
                target = {"jid": jid, "score": repr(score)}
                actions = Raw(form(v.url(move), spec.move_label, target)
                              + form(v.url(delete), "delete", target))
            error: str = clip(j.get("error_message") or "")
            if j.get("error_class"):
                error = f'{j["error_class"]}: {error}'
            trace = j.get("error_backtrace")
            if isinstance(trace, str) and trace:
                # the traceback the class's ``backtrace`` option kept, folded under its error
                error = Raw(f"<details><summary>{e(error)}</summary><pre>{e(trace)}</pre></details>")
            row = [jid or "-", j.get("class") or "-", clip(j.get("args")), when(score), error]
            if which == "dead":
                row.append(_dead_link(v, j))
            rows.append((*row, actions))
        bulk = ""
        if not v.read_only:
            bulk = (form(v.url(move), spec.move_all, {"all": "1"}, spec.confirm)
                    + form(v.url(delete), "delete all", {"all": "1"}, "Delete every job of this set?"))
        heads = ["jid", "class", "args", spec.when, "error", *(["quarantine"] if which == "dead" else []), ""]
        return spec.title, Raw(f"<p>{spec.intro}</p>{bulk}" + table(heads, rows))
    return page


def _dead_link(v: View, job: dict[str, Any]) -> str:
    """A dead ReconciledJob record's quarantine entry, or that it was released / is
    resolved (:func:`reconcile.whereis.dead_link`); "-" for other records."""
    from ..reconciled import ReconciledJob
    from ..registry import all_classes
    from ..whereis import dead_link, link_line

    cls = all_classes().get(str(job.get("class")))
    if cls is None or not issubclass(cls, ReconciledJob) or not isinstance(job.get("args"), list):
        return "-"
    return link_line(dead_link(v.settings, cls, job["args"]))


def quarantine(v: View) -> tuple[str, Raw]:
    from ..store import quarantine as q
    from ..store.engine import get_engine

    rows = []
    entries = q.list_entries(get_engine(v.settings))
    for entry in entries[:PAGE_ROWS]:
        key = json.dumps(list(entry.key))
        action = Raw("") if v.read_only else form(
            v.url("/quarantine/release"), "release", {"job": entry.job, "key": key})
        jid = (entry.payload or {}).get("jid")
        # the dead record of the delivery that quarantined the key (one bounded lookup)
        record = f"dead record {jid}" if isinstance(jid, str) and jid and (
            v.broker.locate(jid).state == "dead") else "no dead record"
        rows.append((entry.job, key, entry.quarantined_at.strftime("%Y-%m-%d %H:%M:%S"),
                     f"{entry.error_class}: {clip(entry.error_message or entry.reason)}", record, action))
    return "Quarantined keys", Raw(
        f"<p>{len(entries):,} keys of ReconciledJobs that died (newest {PAGE_ROWS} shown); "
        "passes skip them until released (<code>reconcile quarantine release</code>).</p>"
        + table(["job", "key", "since", "error", "dead record", ""], rows))


def runs(v: View) -> tuple[str, Raw]:
    from ..store.engine import get_engine
    from ..store.runs import recent_runs

    rows = [(r.started_at.strftime("%Y-%m-%d %H:%M:%S"), r.name, r.trigger, r.found, r.enqueued,
             r.already_queued, r.quarantined, r.deferred,
             "running" if r.finished_at is None else f"{r.duration_ms} ms",
             "disabled" if r.disabled else clip(r.error or ""))
            for r in recent_runs(get_engine(v.settings), limit=PAGE_ROWS)]
    return "Reconcile passes", Raw(table(
        ["started", "job", "trigger", "found", "enqueued", "already queued", "quarantined",
         "deferred", "took", "note"], rows))
