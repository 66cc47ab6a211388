"""The floor of the reconciled drain: the job's transaction alone, no queue at all.

``python -m benchmarks.apps.raw_pg_worker --part K/P -t T``: T threads, one psycopg
connection each (the driver reconcile uses under SQLAlchemy), run the drain job's
transaction (INSERT an effect, UPDATE the item, COMMIT) for every item id ``i`` with
``i % P == K``, ids handed out by an in-process counter. Like the raw redis-py rows of
the Redis section, it is what no job system on this PostgreSQL can beat.
"""

from __future__ import annotations

import argparse
import os
import threading

import psycopg

from .. import probe


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--part", default="0/1")
    p.add_argument("-t", "--threads", type=int, default=8)
    p.add_argument("-n", type=int, required=True, help="item ids 1..n")
    args = p.parse_args()
    k, parts = (int(x) for x in args.part.split("/"))
    ids = iter(range(1 + k, args.n + 1, parts))  # item i % parts == (k + 1) % parts
    lock = threading.Lock()
    conninfo = os.environ["BENCH_PQ_CONNINFO"]

    def work() -> None:
        with psycopg.connect(conninfo) as conn:
            while True:
                with lock:
                    i = next(ids, None)
                if i is None:
                    return
                with conn.transaction():
                    conn.execute("INSERT INTO effects (item_id) VALUES (%s)", (i,))
                    conn.execute("UPDATE items SET done = true WHERE id = %s", (i,))
                    probe.hit()

    threads = [threading.Thread(target=work) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    threading.Event().wait()  # stay up (the probe publishes) until the driver stops us


if __name__ == "__main__":
    main()
