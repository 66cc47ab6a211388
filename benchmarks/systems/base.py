"""What the driver needs from one job system (reconcile, a peer, or raw redis-py)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    uses_redis: bool = True
    """False for a PostgreSQL-only system (procrastinate): it has no Redis database and
    takes part only in the "reconciled" section."""
    pg_schema: str = ""
    """The system's schema in the bench database (reconciled section), "" if none."""
    pg_config: str = ""
    """Configuration of the reconciled section's workers, for the report and docs."""
    worker_preload: tuple[str, ...] = ()
    """Modules a worker process imports behind the start gate (:mod:`benchmarks.gate`)
    before it reports ready: the system's CLI module comes with its command; these are
    the app modules the worker loads (its tasks, its broker)."""
    pg_worker_preload: tuple[str, ...] = ()
    """The same for the reconciled section's workers."""
    family: str = ""
    """The system this one is a version of ("reconcile" for ``reconcile@<ref>``), or ""."""

    @property
    def db(self) -> int:
        return DBS[self.name]

    def expected_modules(self) -> dict[str, Path]:
        """Package -> the directory each worker process must import it from (checked
        from the gate's ready reports; empty: not checked)."""
        return {}

    def urls(self) -> list[tuple[str, str]]:
        """(role, URL) of every service connection the system makes, driver side and
        worker side, read from the library's own objects or the worker's command line
        and environment (not from the harness's constants): :mod:`benchmarks.check`
        compares them with the harness's URLs. Call after :meth:`open`."""
        return []

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

    def seed_pass(self, n: int) -> None:
        """The reconcile pass's table with n pending rows (the reconcile family only)."""
        raise NotImplementedError(f"{self.name} has no reconcile pass")

    def timed_pass(self) -> tuple[float, dict[str, Any]]:
        """One reconcile pass: (wall seconds, counts ``found``, ``enqueued``,
        ``already_queued``, ``error`` and a ``summary`` line)."""
        raise NotImplementedError(f"{self.name} has no reconcile pass")

    def pg_worker_command(self) -> list[str]:
        """Command line of one worker process of the reconciled drain."""
        raise NotImplementedError

    def pg_worker_commands(self, procs: int) -> list[list[str]]:
        """Command lines of the ``procs`` worker processes of the reconciled drain."""
        return [self.pg_worker_command()] * procs

    def pg_worker_env(self) -> dict[str, str]:
        return {}


def redis_url_of(client: Any) -> str:
    """``redis://host:port/db`` of a redis-py client (sync or asyncio), from its pool."""
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}?db={kw.get('db', 0)}"
    return f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def arg_after(command: list[str], flag: str) -> str:
    """The value that follows ``flag`` in a command line ("" if it is not there)."""
    return command[command.index(flag) + 1] if flag in command else ""


def timed_loop(n: int, call: Callable[[int], object]) -> float:
    """Seconds for ``call(i)`` for i in range(n)."""
    fn = call  # keep the loop tight
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return time.perf_counter() - t
