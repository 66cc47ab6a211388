"""Job classes and helpers shared by the core-engine tests.

Worker subprocesses import this module (``--app tests.jobs_core``) while test modules
import it as ``jobs_core``; the classes carry explicit registry names (``core.*``) so
both see the same names whatever the import path.

Effects are recorded in Redis under the test's namespace (``{ns}:t:*``, removed with
the namespace), so a test can count lost and duplicated work across processes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from reconcile import Job
from reconcile.broker import Broker, get_broker
from reconcile.config import Settings
from reconcile.worker import Worker, WorkerSignals, parse_queue

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent

_SCRIPT = Path(sys.executable).parent / "reconcile"
RECONCILE = (
    [str(_SCRIPT)] if _SCRIPT.exists()
    else [sys.executable, "-c", "from reconcile.cli import main; main()"]
)
"""The ``reconcile`` command of this environment."""


# -- waiting -----------------------------------------------------------------------------


def wait_for(
    condition: Callable[[], T], timeout: float = 5.0, interval: float = 0.005, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


# -- effect bookkeeping (Redis, per namespace) --------------------------------------------


def _k(broker: Broker, name: str) -> str:
    return f"{broker.keys.tag}:t:{name}"


def record(token: str, what: str = "done") -> None:
    """Count one ``what`` event for ``token`` (hash ``{ns}:t:<what>``)."""
    b = get_broker()
    b.redis.hincrby(_k(b, what), token, 1)


def counts(broker: Broker, what: str = "done") -> dict[str, int]:
    """``token -> times`` recorded for ``what``."""
    raw = broker.redis.hgetall(_k(broker, what))
    return {k.decode(): int(v) for k, v in raw.items()}  # type: ignore[union-attr]


# -- jobs ----------------------------------------------------------------------------------


class Record(Job):
    """Records that ``token`` ran."""

    name = "core.Record"

    def perform(self, token: str) -> None:
        record(token)


class Sleep(Job):
    """Records the start, sleeps ``seconds``, records the end."""

    name = "core.Sleep"

    def perform(self, token: str, seconds: float) -> None:
        record(token, "started")
        time.sleep(seconds)
        record(token)


class KillSelf(Job):
    """SIGKILLs the worker process that runs it (a poison pill). Never run in-process."""

    name = "core.KillSelf"

    def perform(self, token: str) -> None:
        record(token, "started")
        os.kill(os.getpid(), signal.SIGKILL)


# -- worker subprocesses --------------------------------------------------------------------


def spawn_worker(
    redis_url: str,
    namespace: str,
    *args: str,
    log: Path | None = None,
    **env: Any,
) -> subprocess.Popen[bytes]:
    """``reconcile worker --app tests.jobs_core <args>`` as a subprocess.

    Settings come from ``RECONCILE_*`` variables: ``env`` keys are setting names
    (``lease_seconds=2`` becomes ``RECONCILE_LEASE_SECONDS=2``).
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE_")}
    environ.update(
        RECONCILE_REDIS_URL=redis_url,
        RECONCILE_NAMESPACE=namespace,
        RECONCILE_IDLE_WAIT="0.5",
        RECONCILE_POLL_INTERVAL="0.2",
        PYTHONUNBUFFERED="1",
    )
    environ.update({f"RECONCILE_{k.upper()}": str(v) for k, v in env.items()})
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    cmd = [*RECONCILE, "worker", "--app", "tests.jobs_core", *args]
    try:
        return subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


# -- in-process workers ---------------------------------------------------------------------


@contextmanager
def running_worker(
    settings: Settings, queues: Sequence[str] = ("default",), *, strict: bool = False,
    stop_timeout: float = 2.0, signals: WorkerSignals | None = None, **overrides: Any,
) -> Iterator[Worker]:
    """An in-process :class:`Worker` on ``queues`` (``"name"`` or ``"name,weight"``),
    with ``overrides`` applied to ``settings`` and ``signals`` (test signals) given to
    it; stopped on exit."""
    s = settings.with_overrides(**overrides) if overrides else settings
    worker = Worker(s, [parse_queue(q) for q in queues], strict=strict, signals=signals)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop(stop_timeout)


def everything(broker: Broker) -> list[bytes]:
    """Every payload waiting in Redis: all queues, then the scheduled set."""
    out: list[bytes] = []
    for q in broker.queue_names():
        out += broker.queue_entries(q, 100_000)
    out += [m for m, _ in broker.set_entries("scheduled", 0, -1)]
    return out


def without_jids(raws: list[bytes]) -> list[bytes]:
    """Payloads with their random jids blanked, sorted: comparable across enqueue paths."""
    return sorted(re.sub(rb'"jid":"[0-9a-f]{24}"', b'"jid":""', r) for r in raws)
