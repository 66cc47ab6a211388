"""``reconcile health``: ask one process whether it is live or ready.

Two ways to find the process, and what each answers:

* **by URL** (``--url http://host:port``, or ``http://127.0.0.1:<metrics_port>`` when
  only the setting is given: a Kubernetes exec probe in the process's container):
  ``GET /livez`` or ``/readyz`` of its metrics server, the process's own judgement
  (:mod:`.health`). Any answer but 200 is unhealthy, and so is no answer;
* **by process id** (``--process ID``, as ``reconcile status`` lists it): the Redis
  registry (``{ns}:procs`` for workers, ``{ns}:schedulers``), read through
  :func:`reconcile.api.status`. Live: its heartbeat record has not expired; ready:
  live and (a worker) not quiet. From any host that reaches Redis, no port needed,
  but coarser: a record beats while the heartbeat thread does.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Verdict:
    ok: bool
    summary: str
    body: dict[str, Any] = field(default_factory=dict)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be probed, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be http://host:port of a worker's or scheduler's metrics server"
    try:
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        return "has a port that is not a number 0..65535"
    return None


def by_url(url: str, probe: str, timeout: float) -> Verdict:
    """``probe`` (``live`` or ``ready``) of the server at ``url``."""
    target = url.rstrip("/") + ("/livez" if probe == "live" else "/readyz")
    try:
        with urllib.request.urlopen(target, timeout=timeout) as reply:
            raw = reply.read()
            code = reply.status
    except urllib.error.HTTPError as exc:
        raw, code = exc.read(), exc.code
    except (OSError, ValueError) as exc:
        return Verdict(False, f"cannot reach {target} ({exc})")
    try:
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError("not an object")
    except ValueError:
        return Verdict(False, f"{target} answered {code} with no health document "
                              "(is it a reconcile metrics port?)")
    if code == 200 and body.get("status") == "ok":
        return Verdict(True, f"{probe}: ok ({target})", body)
    reasons = "; ".join(str(r) for r in body.get("reasons", [])) or f"HTTP {code}"
    return Verdict(False, f"not {probe}: {reasons} ({target})", body)


def by_process(doc: dict[str, Any], process: str, probe: str) -> Verdict:
    """``probe`` of the worker or scheduler ``process`` in a status document."""
    for p in doc["processes"]:
        if p["id"] == process:
            if not p["alive"]:
                return Verdict(False, f"worker {process}: heartbeat expired (dead, not yet reaped)", p)
            if probe == "ready" and p["quiet"]:
                return Verdict(False, f"worker {process}: quiet, fetching no new jobs", p)
            return Verdict(True, f"worker {process}: {probe}, {p['busy']} busy of {p['concurrency']}", p)
    for s in doc.get("schedulers", []):
        if s["id"] == process:
            if not s["alive"]:
                return Verdict(False, f"scheduler {process}: no beat for {s.get('last_beat_ago')}s", s)
            return Verdict(True, f"scheduler {process}: {probe}, last beat {s.get('last_beat_ago')}s ago", s)
    known = [p["id"] for p in doc["processes"]] + [s["id"] for s in doc.get("schedulers", [])]
    return Verdict(False, f"no worker or scheduler {process!r} is registered in namespace "
                          f"{doc['namespace']!r} (registered: {', '.join(known) or 'none'})")
