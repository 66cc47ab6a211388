"""Reap cost by fleet size: ``python -m benchmarks.reap_cost [--sizes 100,1000,5000]
[--calls 50] [--redis-url URL] [--json out.json]``.

Measures one ``reap.lua`` call against N registered processes (simulated records:
each process registered by ``heartbeat.lua``, its alive key live, two leased jobs),
before (``benchmarks/reap_before.lua``, the script as it was: ``SMEMBERS`` of every
process and an ``EXISTS`` each) and after (the current ``reap.lua``: the lapsed head
of ``{ns}:beats``, behind the reaper's turn). Figures are Redis's own time per call
(``INFO commandstats``, ``usec_per_call`` of ``evalsha``, so loopback round trips are
left out), the median of ``--calls`` calls, for:

* **steady**: nobody died, the common case (every interval of every process);
* **10 dead**: ten processes lapsed since the last reap, two leased jobs each
  (recreated before each call, outside the measured time);
* **turn refused**: ``SET {ns}:reaper NX PX`` and ``PTTL`` of a process that finds the
  turn taken (after only; plain commands, ``cmdstat_set`` plus ``cmdstat_pttl``);
* **per interval, fleet-wide**: before, every process reaps each interval (N steady
  calls); after, one steady reap and N tries at the turn (counted as refused).

Without ``--redis-url`` a private ``redis-server`` is started on a free port (and
stopped); with it, a namespace of its own is used and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from reconcile.broker import Broker
from reconcile.broker.maintenance import LEGACY_SAMPLE, REAP_BATCH, RECOVERY_TTL
from reconcile.broker.scripts import with_prelude
from reconcile.config import load_settings

BEFORE = Path(__file__).resolve().parent / "reap_before.lua"
LEASED = 2
"""Leased jobs per simulated process."""
DEAD = 10
"""Processes that lapsed between two reaps, in the "10 dead" case."""


@contextmanager
def private_redis() -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("reap_cost: redis-server is not installed; pass --redis-url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tempfile.mkdtemp(prefix="reap-cost-")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", folder],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def server_usec(client: redis.Redis, call: Callable[[], Any], setup: Callable[[], Any] | None,
                calls: int) -> float:
    """Median of Redis's own time (µs) for one EVALSHA made by ``call``; ``setup`` runs
    before each call with plain commands, which commandstats counts apart."""
    samples = []
    call()  # loads the script (NOSCRIPT, then EVALSHA): not measured
    for _ in range(calls):
        if setup is not None:
            setup()
        client.config_resetstat()
        call()
        stats = client.info("commandstats")["cmdstat_evalsha"]
        samples.append(float(stats["usec"]) / int(stats["calls"]))
    return statistics.median(samples)


def measure(url: str, n: int, calls: int) -> dict[str, float]:
    ns = "reapcost" + uuid.uuid4().hex[:6]
    settings = load_settings({"redis_url": url, "namespace": ns, "lease_seconds": 3600.0},
                             env={}, pyproject=False)
    broker = Broker(settings)
    r, k = broker.redis, broker.keys
    old = r.register_script(with_prelude(BEFORE.read_text()))
    new = broker.register("reap.lua")
    try:
        for i in range(n):
            proc = f"host{i % 50}:{10000 + i}:{i:06x}"
            broker.heartbeat(proc, {"hostname": f"host{i % 50}", "queues": "default",
                                    "concurrency": 10, "busy": 0})
            r.hset(k.lease(proc), mapping={
                f"{j + 1}|default": f'{{"queue":"default","jid":"{i:012x}{j:012x}"}}'
                for j in range(LEASED)})

        def make_dead() -> None:
            pipe = r.pipeline(transaction=False)
            for d in range(DEAD):
                proc = f"dead:{d}"
                pipe.sadd(k.procs, proc)
                pipe.zadd(k.beats, {proc: 0})
                pipe.hset(k.lease(proc), mapping={
                    f"{j + 1}|default": f'{{"queue":"default","jid":"dead{d:08x}{j:012x}"}}'
                    for j in range(LEASED)})
            pipe.delete(k.queue("default"), *(k.recoveries(f"dead{d:08x}{j:012x}")
                                              for d in range(DEAD) for j in range(LEASED)))
            pipe.execute()

        def before() -> Any:
            return old(keys=[k.script_key], args=[repr(time.time()), settings.max_recoveries,
                                                  RECOVERY_TTL, 64])

        def after() -> Any:
            return new(keys=[k.script_key], args=[settings.max_recoveries, RECOVERY_TTL, 64,
                                                  REAP_BATCH, LEGACY_SAMPLE])

        out = {
            "before_steady_us": server_usec(r, before, None, calls),
            "before_dead_us": server_usec(r, before, make_dead, calls),
            "after_steady_us": server_usec(r, after, None, calls),
            "after_dead_us": server_usec(r, after, make_dead, calls),
        }
        # the turn: SET NX PX and PTTL, refused (someone holds it), Redis's time for both
        r.set(k.reaper, b"someone", px=3_600_000)
        turn = []
        for _ in range(calls):
            r.config_resetstat()
            assert broker.take_reaper_turn("bench", 5000) > 0
            stats = r.info("commandstats")
            turn.append(float(stats["cmdstat_set"]["usec"]) + float(stats["cmdstat_pttl"]["usec"]))
        out["after_turn_refused_us"] = statistics.median(turn)
        out["before_interval_ms"] = n * out["before_steady_us"] / 1000
        out["after_interval_ms"] = (out["after_steady_us"] + n * out["after_turn_refused_us"]) / 1000
        return out
    finally:
        keys = list(r.scan_iter(match=k.pattern, count=1000))
        for s in range(0, len(keys), 1000):
            r.unlink(*keys[s:s + 1000])


def table(rows: dict[int, dict[str, float]]) -> str:
    lines = [
        "| Processes | before: one call | after: one call | before, 10 dead | after, 10 dead "
        "| after: turn refused | per interval, fleet-wide: before | after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, f in rows.items():
        lines.append(
            f"| {n:,} | {f['before_steady_us'] / 1000:.2f} ms | {f['after_steady_us']:.0f} µs "
            f"| {f['before_dead_us'] / 1000:.2f} ms | {f['after_dead_us']:.0f} µs "
            f"| {f['after_turn_refused_us']:.1f} µs | {f['before_interval_ms']:,.0f} ms "
            f"| {f['after_interval_ms']:.1f} ms |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.reap_cost", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,1000,5000", help="fleet sizes, comma-separated")
    ap.add_argument("--calls", type=int, default=50, help="measured calls per figure (median)")
    ap.add_argument("--redis-url", default="", help="an existing Redis (default: a private one)")
    ap.add_argument("--json", default="", help="also write the figures here")
    args = ap.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--sizes must be integers separated by commas, got {args.sizes!r}")
    if not sizes or min(sizes) < 1 or args.calls < 1:
        ap.error("--sizes must be positive integers and --calls at least 1")

    def run(url: str) -> dict[int, dict[str, float]]:
        return {n: measure(url, n, args.calls) for n in sizes}

    if args.redis_url:
        rows = run(args.redis_url)
    else:
        with private_redis() as url:
            rows = run(url)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({str(n): f for n, f in rows.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
