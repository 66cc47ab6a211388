"""``reconcile dev``: a scheduler, one worker and, when needed, private servers, in one
command for local development.

:func:`run_dev` starts ``reconcile scheduler`` and ``reconcile worker`` as child
processes of the same Python, with the caller's ``--app`` modules, on the servers
:func:`reconcile.embedded.servers_for` provides (the configured ones, or private ones
for those that do not answer). On a private PostgreSQL it runs ``reconcile db
upgrade`` first (the framework tables; the application's own tables are the
application's to create, at the URL the start-up line prints); a configured database
is never migrated by this command.

Stopping: Ctrl-C in a terminal sends SIGINT to the whole foreground process group,
so the children get it directly and shut down as they always do (the worker finishes
or pushes back its jobs within ``shutdown_timeout``). A SIGINT or SIGTERM sent to this
process alone is passed on to the children as SIGTERM. Once both children have exited
(or been killed :data:`STOP_GRACE` seconds after ``shutdown_timeout``), the private
servers stop, and the command exits 0. If a child exits on its own, the other is
stopped too and the command exits 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType

from . import registry
from .config import Settings, mask_url
from .embedded import Mode, servers_for
from .store import migrate

STOP_GRACE = 10.0
"""Seconds beyond ``shutdown_timeout`` a child gets to exit before it is killed."""

CHILD_SETTINGS = {"redis_url": "RECONCILE_REDIS_URL", "database_url": "RECONCILE_DATABASE_URL",
                  "namespace": "RECONCILE_NAMESPACE", "log_level": "RECONCILE_LOG_LEVEL"}
"""Settings handed to the children through their environment (not their command line,
where a URL's password would show in ``ps``)."""


def default_queues() -> list[str]:
    """Every queue a registered job class names, sorted (``default`` if there is none):
    the worker of ``reconcile dev`` runs all of them unless ``-q`` says otherwise."""
    return sorted({c.queue for c in registry.all_classes().values()}) or ["default"]


def child_commands(apps: Sequence[str], queues: Sequence[str], concurrency: int | None
                   ) -> list[list[str]]:
    """The scheduler's and the worker's command lines."""
    app_args = [arg for spec in apps for arg in ("--app", spec)]
    worker = [sys.executable, "-m", "reconcile", "worker", *app_args]
    for q in queues:
        worker += ["-q", q]
    if concurrency is not None:
        worker += ["-c", str(concurrency)]
    return [[sys.executable, "-m", "reconcile", "scheduler", *app_args], worker]


def child_env(settings: Settings) -> dict[str, str]:
    """This process's environment with the effective connection settings."""
    env = dict(os.environ)
    for name, var in CHILD_SETTINGS.items():
        env[var] = str(getattr(settings, name))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_dev(settings: Settings, apps: Sequence[str], queues: Sequence[str],
            concurrency: int | None, mode: Mode, say: Callable[[str], None]) -> int:
    """Run until Ctrl-C (or SIGTERM); returns the exit code (see the module docstring)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with servers_for(settings, mode, say) as s:
            if s.database_url != settings.database_url:
                migrate.upgrade(s.database_url)
            if stop.is_set():
                return 0
            children = [subprocess.Popen(cmd, env=child_env(s))
                        for cmd in child_commands(apps, queues or default_queues(), concurrency)]
            say(f"scheduler (pid {children[0].pid}) and worker (pid {children[1].pid}) on "
                f"Redis {mask_url(s.redis_url)} namespace {s.namespace}, PostgreSQL "
                f"{mask_url(s.database_url)}; Ctrl-C stops them")
            exited_alone = False
            while not stop.wait(0.2):
                if any(c.poll() is not None for c in children):
                    exited_alone = True
                    break
            _stop_children(children, settings.shutdown_timeout + STOP_GRACE)
            if exited_alone:
                say("a child process exited on its own: stopped the other (exit code "
                    + ", ".join(str(c.returncode) for c in children) + ")")
                return 1
            return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_children(children: list[subprocess.Popen[bytes]], timeout: float) -> None:
    # SIGTERM is what a Ctrl-C already delivered to them (both handle INT and TERM the
    # same, and a second one changes nothing), so it is safe to send in every case
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)
