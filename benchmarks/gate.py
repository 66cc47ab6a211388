"""The start gate every worker process of the benchmark runs behind.

``python -m benchmarks.gate [--preload MODULE]... -- COMMAND...`` imports the system's
code (its CLI's module and the app module the worker loads), reports "ready" to the
driver, waits until the driver opens the gate, then runs ``COMMAND`` in this same
process: a console script (``dramatiq``, ``rq``, ``celery`` ...) through its entry
point, or ``python -m MODULE`` through :mod:`runpy`. The system's own code is what
runs after the gate; the gate only moves the interpreter's start and the imports out
of the timed window, for every system alike.

The contract with the driver (:class:`benchmarks.common.Workers`), through the control
database, keyed by the worker set's ``BENCH_RUN``:

* ready: ``RPUSH ready:<run>`` a JSON object ``{"pid": ..., "modules": {package: file},
  "absent": [module, ...]}`` (the file each preloaded top-level package was imported
  from, so the driver can show which code a worker runs, e.g. ``reconcile`` of another
  commit; the preloads that do not exist in that code);
* go: the gate blocks on ``BLPOP go:<run>``; the driver pushes one token per process
  once every process is ready, and the clock of a drain starts at that push.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import runpy
import sys
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import redis

from .common import CONTROL_DB, url

READY_TIMEOUT = 120.0  # seconds the gate waits for "go" before giving up


def ready_key(run: str) -> str:
    return f"ready:{run}"


def go_key(run: str) -> str:
    return f"go:{run}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gate")
    p.add_argument("--preload", action="append", default=[], metavar="MODULE")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("no command")
    modules: dict[str, str] = {}
    absent: list[str] = []
    for name in args.preload:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:  # e.g. a module that reconcile at an older commit lacks
            absent.append(name)
            continue
        top = name.split(".")[0]
        modules[top] = str(getattr(sys.modules[top], "__file__", "?"))
    target = _target(command)
    run = os.environ.get("BENCH_RUN", "none")
    r = redis.Redis.from_url(url(CONTROL_DB))
    r.rpush(ready_key(run), json.dumps({"pid": os.getpid(), "modules": modules, "absent": absent}))
    if r.blpop([go_key(run)], timeout=READY_TIMEOUT) is None:
        sys.exit(f"benchmarks.gate: no go within {READY_TIMEOUT:.0f}s")
    r.close()
    if os.environ.get("BENCH_GATE_TRACE"):
        _trace_late_imports(set(sys.modules), float(os.environ["BENCH_GATE_TRACE"]))
    target()


def _trace_late_imports(before: set[str], after: float) -> None:
    """``BENCH_GATE_TRACE=<seconds>``: that long after the gate opened, print to the
    worker log the modules imported since (what a system's preload list is missing)."""
    import threading
    import time

    def report() -> None:
        time.sleep(after)
        late = sorted(set(sys.modules) - before)
        tops = sorted({m.split(".")[0] for m in late})
        print(f"benchmarks.gate: pid {os.getpid()}: {len(late)} modules imported after the gate, "
              f"under {', '.join(tops) or '-'}: {' '.join(late[:60])}", file=sys.stderr, flush=True)

    threading.Thread(target=report, daemon=True).start()


def _target(command: list[str]) -> Runner:
    """What runs after the gate; the console script's module is imported here, before it."""
    if len(command) >= 3 and command[1] == "-m":
        module, rest = command[2], command[3:]
        # The module itself is not imported here: a script's body may do its work at
        # import. A preloaded module with a main guard (arq_app) runs again as __main__,
        # which runpy warns about; running its body again is the point
        if module in sys.modules:
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="runpy")
        return Runner(lambda: runpy.run_module(module, run_name="__main__", alter_sys=True),
                      [module, *rest])
    name = Path(command[0]).name
    found = list(entry_points(group="console_scripts", name=name))
    if not found:
        sys.exit(f"benchmarks.gate: no console script {name!r}")
    func = found[0].load()
    return Runner(lambda: sys.exit(func()), command)


class Runner:
    """A prepared ``sys.argv`` and the call that runs the command with it."""

    def __init__(self, call: Callable[[], object], argv: list[str]) -> None:
        self.call = call
        self.argv = argv

    def __call__(self) -> None:
        sys.argv = list(self.argv)
        self.call()


if __name__ == "__main__":
    main()
