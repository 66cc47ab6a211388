"""Inspection: what Redis holds right now (queues, sets, processes, counters).

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
"""

from __future__ import annotations

import time
from typing import Any

from .broker import Broker, get_broker
from .config import Settings
from .payload import loads_lenient


def _age(raw: bytes | None, now: float) -> float:
    if raw is None:
        return 0.0
    job = loads_lenient(raw)
    stamp = job.get("enqueued_at") or job.get("at") or job.get("created_at")
    return max(0.0, now - float(stamp)) if isinstance(stamp, int | float) else 0.0


def status(settings: Settings | None = None, broker: Broker | None = None) -> dict[str, Any]:
    """A snapshot of the namespace, in a handful of round trips."""
    broker = broker or get_broker(settings)
    now = time.time()
    queues = [
        {"name": name, "size": size, "latency": round(_age(oldest, now), 3)}
        for name, size, oldest in broker.queue_stats(broker.queue_names())
    ]
    procs = []
    for p in broker.processes():
        procs.append({
            "id": p["id"],
            "hostname": p.get("hostname"),
            "pid": int(p["pid"]) if "pid" in p else None,
            "queues": p["queues"].split(",") if p.get("queues") else [],
            "concurrency": int(p.get("concurrency", 0)),
            "busy": int(p.get("busy", 0)),
            "quiet": p.get("quiet") == "1",
            "alive": p["alive"],
            "leased": p["leased"],
            "started_at": float(p["started_at"]) if "started_at" in p else None,
            "beat": float(p["beat"]) if "beat" in p else None,
        })
    return {
        "namespace": broker.settings.namespace,
        "queues": queues,
        **broker.set_sizes(),
        "in_flight": sum(p["leased"] for p in procs),
        "processes": procs,
        "counters": broker.counters(),
    }


def dead_jobs(settings: Settings | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest dead jobs, decoded leniently (malformed ones show their ``raw`` text)."""
    broker = get_broker(settings)
    out = []
    for raw, score in broker.set_entries("dead", 0, limit - 1):
        job = loads_lenient(raw)
        job.setdefault("failed_at", score)
        out.append(job)
    return out
