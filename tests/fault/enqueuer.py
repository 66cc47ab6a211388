"""A client process for scenario 13: enqueues :class:`~tests.fault.oracle_app.PlainOracle`
jobs one by one, as a web app would, and logs what each enqueue answered.

``python -m tests.fault.enqueuer <log> <prefix> <stop-file>``, with the ``RECONCILE_*``
settings in the environment (``RECONCILE_ENQUEUE_REPLICAS`` among them). Every
``FAULT_ENQUEUE_PAUSE`` seconds (default 0.01) it enqueues token ``<prefix><n>`` and
appends one line to ``<log>`` (``O_APPEND``, so SIGKILL loses nothing written):

* ``E <token>`` -- the enqueue returned: the job is acknowledged;
* ``R <token>`` -- ``NotReplicated``: on the primary, not on enough replicas;
* ``O <token>`` -- ``READONLY``: the server is a replica now (a client given one
  server's ``redis://`` URL, after a failover);
* ``X <token>`` -- any other error (Redis unreachable during the election).

It stops when ``<stop-file>`` exists.
"""

from __future__ import annotations

import os
import sys
import time

import redis

from reconcile.errors import NotReplicated
from tests.fault.oracle_app import PlainOracle


def main() -> None:
    log, prefix, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    pause = float(os.environ.get("FAULT_ENQUEUE_PAUSE", "") or 0.01)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    n = 0
    while not os.path.exists(stop):
        n += 1
        token = f"{prefix}{n}"
        try:
            PlainOracle.perform_async(token)
            kind = "E"
        except NotReplicated:
            kind = "R"
        except redis.exceptions.ReadOnlyError:
            kind = "O"
        except Exception:
            kind = "X"
        os.write(fd, f"{kind} {token}\n".encode())
        time.sleep(pause)


if __name__ == "__main__":
    main()
