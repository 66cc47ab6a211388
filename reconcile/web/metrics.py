"""``/metrics``: the status document in Prometheus's text exposition format (0.0.4).

Everything comes from :func:`reconcile.api.status` (Redis only, a handful of round
trips), so a scrape costs what ``reconcile status`` costs. Names:

=====================================  =======  ===========================================
metric                                 type     labels, meaning
=====================================  =======  ===========================================
``reconcile_queue_jobs``               gauge    ``queue``: jobs waiting
``reconcile_queue_latency_seconds``    gauge    ``queue``: age of the oldest waiting job
``reconcile_set_jobs``                 gauge    ``set`` (scheduled, retry, dead)
``reconcile_in_flight_jobs``           gauge    leased by worker processes
``reconcile_processes``                gauge    ``state`` (alive, quiet, dead: not yet reaped)
``reconcile_busy_threads``             gauge    executor threads running a job, all processes
``reconcile_threads``                  gauge    executor threads (concurrency), all processes
``reconcile_schedulers_alive``         gauge    schedulers beating now (0: passes stopped)
``reconcile_jobs_total``               counter  ``outcome`` (processed, failed, already_done,
                                                lock_busy, db_unavailable, disabled, held)
=====================================  =======  ===========================================
"""

from __future__ import annotations

import math
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def sample_value(value: float) -> str:
    """A sample as Prometheus reads it back exactly: an integer in full (``{:g}`` would
    print 123456789 as ``1.23457e+08`` and break ``rate()``), a float at ``repr``
    precision, and ``NaN``, ``+Inf``, ``-Inf`` as the format spells them."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(doc: dict[str, Any]) -> bytes:
    """The exposition text of a status document."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{labels} {sample_value(value)}" for labels, value in samples)

    family("reconcile_queue_jobs", "gauge", "Jobs waiting in the queue.",
           [(f'{{queue="{_label(q["name"])}"}}', q["size"]) for q in doc["queues"]])
    family("reconcile_queue_latency_seconds", "gauge", "Age of the oldest job waiting in the queue.",
           [(f'{{queue="{_label(q["name"])}"}}', q["latency"]) for q in doc["queues"]])
    family("reconcile_set_jobs", "gauge", "Jobs in the scheduled, retry and dead sets.",
           [(f'{{set="{s}"}}', doc[s]) for s in ("scheduled", "retry", "dead")])
    family("reconcile_set_due_jobs", "gauge",
           "Jobs of the scheduled and retry sets that are due now (about to be promoted).",
           [(f'{{set="{s}"}}', doc[f"{s}_due"]) for s in ("scheduled", "retry")])
    family("reconcile_in_flight_jobs", "gauge", "Jobs leased by worker processes.",
           [("", doc["in_flight"])])
    procs = doc["processes"]
    states = {"alive": 0, "quiet": 0, "dead": 0}
    for p in procs:
        states["quiet" if p["quiet"] else ("alive" if p["alive"] else "dead")] += 1
    family("reconcile_processes", "gauge", "Registered worker processes by state.",
           [(f'{{state="{s}"}}', n) for s, n in states.items()])
    family("reconcile_busy_threads", "gauge", "Executor threads running a job.",
           [("", sum(p["busy"] for p in procs if p["alive"]))])
    family("reconcile_threads", "gauge", "Executor threads of live worker processes.",
           [("", sum(p["concurrency"] for p in procs if p["alive"]))])
    family("reconcile_schedulers_alive", "gauge",
           "Schedulers beating now; 0 means no reconcile pass, cron job or Redis-loss healing runs.",
           [("", doc["schedulers_alive"])])
    family("reconcile_jobs_total", "counter", "Job outcomes since the namespace was created.",
           [(f'{{outcome="{_label(k)}"}}', n) for k, n in doc["counters"].items()])
    return ("\n".join(out) + "\n").encode()
