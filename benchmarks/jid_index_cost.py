"""Redis-side cost of the jid index (issue 13, item 7): the server's microseconds per
job (``INFO commandstats`` of EVALSHA) and bytes per queued job, for a bulk enqueue of
N plain jobs (1,000 per call) and their drain (10 leased per exchange, acked with the
jid), on a Redis of its own (the URL argument; its commandstats are reset).

    python benchmarks/jid_index_cost.py redis://127.0.0.1:6397/3                 # this tree
    PYTHONPATH=<checkout of main> python benchmarks/jid_index_cost.py <url>       # before

Redis-side figures do not depend on the client's CPU, so they hold on a loaded machine
where end-to-end throughput does not (see docs/benchmarks.md). ``index=False`` runs
this tree with the enqueue-side index off (a ReconciledJob's path).
"""

from __future__ import annotations

import inspect
import sys

import redis

from reconcile.broker import Broker, PushRecord, SettleOp
from reconcile.config import get_settings

N = 50_000
NEW = "index" in inspect.signature(Broker.push).parameters  # this tree, or a checkout before it


def payload(i: int) -> bytes:
    return (b'{"queue":"default","jid":"%024x","class":"bench.Noop","args":[%d],'
            b'"created_at":1796352000.123,"retry":true,"enqueued_at":1796352000.123}' % (i, i))


def usec(r: redis.Redis) -> int:
    return int(r.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))


def run(url: str, index: bool) -> tuple[float, float, float, int]:
    """(enqueue us/job, drain us/job, bytes per queued job, index entries left)."""
    r = redis.Redis.from_url(url)
    b = Broker(get_settings().with_overrides(redis_url=url, namespace=f"cost{int(index)}"))
    b.flush_namespace()
    payloads = [payload(i) for i in range(N)]
    before = r.info("memory")["used_memory"]
    r.config_resetstat()
    for i in range(0, N, 1000):
        records = [PushRecord("default", 0, "", 0, p) for p in payloads[i:i + 1000]]
        b.push(records, index=index) if NEW else b.push(records)  # type: ignore[call-arg]
    enqueue = usec(r) / N
    memory = (r.info("memory")["used_memory"] - before) / N
    r.config_resetstat()
    ops: list[SettleOp] = []
    while got := b.exchange("p", ["default"], 10, ops):
        ops = [SettleOp.ack(d.field, "", d.raw[26:50].decode()) if NEW else SettleOp.ack(d.field, "")
               for d in got]
    b.settle("p", ops)
    drain = usec(r) / N
    left = int(r.hlen(b.keys.jobs)) if NEW else 0
    b.flush_namespace()
    return enqueue, drain, memory, left


def main() -> None:
    url = sys.argv[1]
    for _ in range(3):
        for index in (False, True) if NEW else (False,):
            enqueue, drain, memory, left = run(url, index)
            print(f"{'new' if NEW else 'old'} index={index!s:5} enqueue {enqueue:.2f} us/job  drain "
                  f"{drain:.2f} us/job  memory {memory:.0f} B/queued job  index entries left {left}")


if __name__ == "__main__":
    main()
