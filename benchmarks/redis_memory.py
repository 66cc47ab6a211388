"""Redis bytes per queued ReconciledJob key: ``python -m benchmarks.redis_memory``.

A reconcile pass enqueues ``--keys`` keys (100,000 by default) of a table built once
in ``--database`` (see :mod:`benchmarks.pass_scale`), into an empty private
``redis-server`` on a free port, once with the jobs ready (the queue) and once with
a jitter (the scheduled set). For each it prints:

* ``used_memory`` after the pass minus before, divided by the keys queued (``INFO
  memory``: everything the pass added, allocator overhead and hash tables included);
* ``MEMORY USAGE <key> SAMPLES 0`` of each key the pass wrote, divided by the keys
  queued: the queue list (payloads), the scheduled set, the pass-lock sets of the
  layout with sets, or ``{ns}:unique:<digest>`` keys (the layout with a key per lock:
  a sample of 1,000 of them, scaled to all).

It measures whatever ``reconcile`` is imported; ``PYTHONPATH=<a checkout of an older
commit>`` measures that commit's layout the same way (docs/redis-layout.md has both).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .pass_scale import PrivateRedis, database_url, ensure_tables, job_class_for


def measure(base: str, name: str, table: str, jitter: float) -> dict[str, Any]:
    from reconcile.config import load_settings, use_settings
    from reconcile.scheduler.passes import run_pass
    from reconcile.store.engine import dispose_engines

    server = PrivateRedis()
    try:
        settings = load_settings({"redis_url": server.url, "namespace": "mem",
                                  "database_url": database_url(base, name, "scale_rc"),
                                  "log_level": "WARNING"}, env={}, pyproject=False)
        use_settings(settings)
        job = job_class_for(table, jitter)
        r = server.client
        before = server.used_memory()
        result = run_pass(job, trigger="manual", owner="memory", settings=settings)
        if result.error:
            raise RuntimeError(result.error)
        after = server.used_memory()
        n = max(result.enqueued, 1)
        usage: dict[str, float] = {}
        locks: list[bytes] = []
        for key in r.scan_iter(match="{mem}:*", count=10_000):
            family = key.decode().split(":")[1]
            if family == "unique":
                locks.append(key)
                continue
            size = int(r.memory_usage(key, samples=0) or 0)
            usage[family] = usage.get(family, 0.0) + size / n
        if locks:  # a key per lock: a sample, scaled to every lock
            sample = locks[:1000]
            each = sum(int(r.memory_usage(k, samples=0) or 0) for k in sample) / len(sample)
            usage["unique"] = each * len(locks) / n
        dispose_engines()
        return {"table": table, "jitter": jitter, "keys": result.enqueued,
                "used_memory_bytes_per_key": round((after - before) / n, 1),
                "memory_usage_bytes_per_key": {k: round(v, 1) for k, v in sorted(usage.items()) if v >= 0.1}}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_memory",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--database", default="reconcile_scale", help="database for the table (kept)")
    parser.add_argument("--keys", choices=["100k", "1m"], default="100k")
    args = parser.parse_args(argv)
    table = f"rows_{args.keys}"
    ensure_tables(args.database_url, args.database, [table])
    from reconcile.store import migrate

    migrate.upgrade(database_url(args.database_url, args.database, "scale_rc"))
    for jitter in (0.0, 60.0):
        print(json.dumps(measure(args.database_url, args.database, table, jitter)), flush=True)


if __name__ == "__main__":
    main()
