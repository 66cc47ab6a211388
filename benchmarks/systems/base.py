"""What the driver needs from one job system (reconcile, a peer, or raw redis-py)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from ..common import DBS, flush_db


class System(ABC):
    """One system under test. Methods run in the driver process.

    ``open()`` imports the library (``ImportError`` means "missing") and connects.
    Enqueue methods return elapsed seconds. ``bulk_api`` is None when the system has
    no bulk enqueue API that costs fewer round trips than single enqueues; the bulk row
    then leaves the system out and says why.
    """

    name: str = ""
    package: str = ""                  # distribution whose version is reported
    bulk_api: str | None = None        # the API used for bulk enqueue, e.g. "enqueue_many"
    no_bulk_reason: str = ""
    runs_workers: bool = True          # False for raw redis-py (enqueue rows only)
    config: str = ""                   # worker configuration, for the report and docs
    drain_share: float = 1.0
    """Drain N = ``Sizes.drain * drain_share``: slow systems drain fewer jobs so each
    drain still lasts seconds but a round stays short; fast ones more, for the same reason."""
    uses_redis: bool = True
    """False for a PostgreSQL-only system (procrastinate): it has no Redis database and
    takes part only in the "reconciled" section."""
    rdrain_share: float = 1.0
    """Reconciled-drain N = ``Sizes.rdrain * rdrain_share`` (same idea as ``drain_share``)."""
    pg_config: str = ""
    """Configuration of the reconciled section's workers, for the report and docs."""

    @property
    def db(self) -> int:
        return DBS[self.name]

    @abstractmethod
    def open(self) -> None: ...

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release connections and event loops."""

    def flush(self) -> None:
        if self.uses_redis:
            flush_db(self.db)

    @abstractmethod
    def enqueue_single(self, n: int) -> float:
        """n no-op jobs, one enqueue call each; seconds."""

    def enqueue_bulk(self, n: int) -> float:
        """n no-op jobs through the bulk API; seconds."""
        raise NotImplementedError(self.no_bulk_reason)

    def prefill(self, n: int) -> None:
        """Put n no-op jobs on the queue as fast as the system allows (not measured)."""
        if self.bulk_api:
            self.enqueue_bulk(n)
        else:
            self.enqueue_single(n)

    def send_latency(self) -> None:
        """Enqueue one latency job whose argument is the time right before the call."""
        raise NotImplementedError

    def worker_command(self) -> list[str]:
        """Command line of one worker process (one executing process) on queue "default"."""
        raise NotImplementedError

    def worker_env(self) -> dict[str, str]:
        """Extra environment of worker processes."""
        return {}

    # -- the "reconciled" section (PostgreSQL); see benchmarks/scenarios/reconciled.py --

    def pg_prepare(self) -> None:
        """Create this system's tables in its schema of the bench database (once a run)."""
        raise NotImplementedError(f"{self.name} takes no part in the reconciled section")

    def pg_prefill(self, n: int) -> None:
        """Reset ``items`` to n pending rows and queue one job per item (not measured)."""
        raise NotImplementedError

    def pg_state(self) -> tuple[int, int, int]:
        """(items done, effect rows, items with more than one effect)."""
        raise NotImplementedError

    def pg_worker_command(self) -> list[str]:
        """Command line of one worker process of the reconciled drain."""
        raise NotImplementedError

    def pg_worker_commands(self, procs: int) -> list[list[str]]:
        """Command lines of the ``procs`` worker processes of the reconciled drain."""
        return [self.pg_worker_command()] * procs

    def pg_worker_env(self) -> dict[str, str]:
        return {}


def timed_loop(n: int, call: Callable[[int], object]) -> float:
    """Seconds for ``call(i)`` for i in range(n)."""
    fn = call  # keep the loop tight
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return time.perf_counter() - t
