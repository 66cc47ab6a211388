"""The driver side of ``reconcile@<ref>``: reconcile's adapter run in a process of its own.

One Python process cannot import two versions of ``reconcile``. So for ``--against
<ref>`` the driver starts ``python -m benchmarks.agent --db N --schema S`` with the
ref's code first on ``PYTHONPATH`` (and this tree's ``benchmarks`` after it), and the
proxy adapter (:mod:`benchmarks.systems.reconcile_ref`) forwards every driver-side call
(enqueues, prefill, latency sends, the reconciled section's preparation and passes) to
a :class:`~benchmarks.systems.reconcile_sys.Reconcile` adapter in here. Timings are
taken in here, around the same calls as for the current code, so the pipe between the
two processes is outside every measured interval.

Protocol: one JSON object a line. First the agent writes ``{"reconcile": <file>}``
(where its ``reconcile`` package was imported from); then for each request
``{"call": <method>, "args": [...]}`` it answers ``{"ok": <result>}`` or
``{"error": <text>}``. End of input ends the agent.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Any

CALLS = frozenset({
    "open", "close", "enqueue_single", "enqueue_bulk", "prefill", "send_latency",
    "worker_command", "pg_prepare", "pg_prefill", "pg_state", "pg_worker_command",
    "seed_pass", "timed_pass", "urls",
})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.agent")
    p.add_argument("--db", type=int, required=True, help="the Redis database number")
    p.add_argument("--schema", required=True, help="the schema in the bench database")
    args = p.parse_args(argv)

    import reconcile

    from . import pg
    from .systems.reconcile_sys import Reconcile

    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but answers on the protocol's stream
    system = Reconcile(db=args.db, schema=args.schema)

    def send(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    send({"reconcile": reconcile.__file__})
    for line in sys.stdin:
        req = json.loads(line)
        name = req["call"]
        try:
            if name not in CALLS:
                raise ValueError(f"not an agent call: {name}")
            result = getattr(system, name)(*req.get("args", []))
            if name == "close":
                pg.DATABASE.drop()  # disposes this process's engines; the driver drops the database
            send({"ok": result})
        except Exception as exc:
            traceback.print_exc()
            send({"error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    main()
