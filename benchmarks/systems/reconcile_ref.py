"""``reconcile@<ref>``: reconcile at another commit, one more system in the same rounds.

``python -m benchmarks --against <ref>`` extracts the ref's ``reconcile/`` package and
``migrations/`` (``git archive``: no worktree, nothing written to the repository) into a
temporary directory that goes first on ``PYTHONPATH`` of its worker processes and of
its driver-side agent (:mod:`benchmarks.agent`), with this tree's ``benchmarks`` after
it. So the harness, the scenarios and the job bodies are the current ones; every line
of reconcile that runs for this system is the ref's. The same virtualenv serves both
(the ref's code must run on the installed dependencies). Each worker reports where its
``reconcile`` was imported from, and a worker that runs another copy fails the
measurement.

It has its own Redis database (``DBS["reconcile@ref"]``) and its own schema in the
bench database (:data:`benchmarks.pg.REF_SCHEMA`), so old and new never share state.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from .. import pg
from ..common import DBS, ROOT
from .base import System
from .reconcile_sys import Reconcile

DB_KEY = "reconcile@ref"
TREE_PATHS = ("reconcile", "migrations")  # what the ref's reconcile needs at run time


def resolve(ref: str) -> str:
    """The commit ``ref`` names in this repository (SystemExit if none)."""
    out = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"--against {ref}: not a commit in {ROOT}")
    return out.stdout.strip()


def extract(commit: str, into: Path) -> Path:
    """The ref's run-time files under ``into``; returns the directory for ``PYTHONPATH``."""
    present = subprocess.run(["git", "ls-tree", "--name-only", commit], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    paths = [p for p in TREE_PATHS if p in present]
    archive = into / "ref.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "archive", "--format=tar", commit, *paths], cwd=ROOT, stdout=f,
                       check=True)
    tree = into / "tree"
    tree.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    archive.unlink()
    return tree


class ReconcileRef(System):
    package = "reconcile-jobs"  # the distribution name (the import package is reconcile)
    family = "reconcile"
    bulk_api = Reconcile.bulk_api
    pg_schema = pg.REF_SCHEMA
    worker_preload = Reconcile.worker_preload
    pg_worker_preload = Reconcile.pg_worker_preload

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self.commit = resolve(ref)
        self.name = f"reconcile@{ref}"
        self.config = "as reconcile (the same command, the ref's code)"
        self.pg_config = self.config
        self.tmp: Path | None = None
        self._tree: Path | None = None
        self.agent: subprocess.Popen[str] | None = None

    @property
    def db(self) -> int:
        return DBS[DB_KEY]

    @property
    def tree(self) -> Path:
        """The directory that goes first on ``PYTHONPATH`` (holding ``reconcile/``)."""
        assert self._tree is not None, "open() first"
        return self._tree

    def _extract(self) -> Path:
        """Put the code this system runs on disk; returns the tree for ``PYTHONPATH``."""
        self.tmp = Path(tempfile.mkdtemp(prefix="reconcile-ref-"))
        return extract(self.commit, self.tmp)

    def expected_reconcile(self) -> Path:
        """The ``reconcile`` package every process of this system must import."""
        return self.tree / "reconcile"

    def expected_modules(self) -> dict[str, Path]:
        return {"reconcile": self.expected_reconcile()}

    def _env(self) -> dict[str, str]:
        # PYTHONSAFEPATH: `python -m` would put the working directory (this tree, with
        # its own reconcile/) before PYTHONPATH
        return {"PYTHONPATH": f"{self.tree}{os.pathsep}{ROOT}", "PYTHONSAFEPATH": "1"}

    def open(self) -> None:
        self._tree = self._extract()
        env = {**os.environ, **self._env(), "BENCH_DB_NAME": pg.DB_NAME}
        self.agent = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.agent", "--db", str(self.db), "--schema", self.pg_schema],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        assert self.agent.stdout is not None
        hello = json.loads(self.agent.stdout.readline() or '{"reconcile": "?"}')
        self.driver_reconcile = hello["reconcile"]
        expected = self.expected_reconcile()
        if not Path(hello["reconcile"]).resolve().is_relative_to(expected.resolve()):
            self.close()
            raise RuntimeError(f"{self.name}: the agent imported reconcile from {hello['reconcile']}, "
                               f"not from {expected}")
        self._call("open")

    def _call(self, name: str, *args: Any) -> Any:
        agent = self.agent
        if agent is None or agent.stdin is None or agent.stdout is None:
            raise RuntimeError(f"{self.name}: agent not running")
        agent.stdin.write(json.dumps({"call": name, "args": list(args)}) + "\n")
        agent.stdin.flush()
        line = agent.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: agent exited (code {agent.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.name} agent: {reply['error']}")
        return reply["ok"]

    def close(self) -> None:
        if self.agent is not None:
            try:
                if self.agent.poll() is None:
                    self._call("close")
            except RuntimeError:
                pass
            finally:
                assert self.agent.stdin is not None
                self.agent.stdin.close()
                try:
                    self.agent.wait(10)
                except subprocess.TimeoutExpired:
                    self.agent.kill()
                    self.agent.wait()
                self.agent = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        self._tree = None

    def urls(self) -> list[tuple[str, str]]:
        return [(role, u) for role, u in self._call("urls")]

    def enqueue_single(self, n: int) -> float:
        return float(self._call("enqueue_single", n))

    def enqueue_bulk(self, n: int) -> float:
        return float(self._call("enqueue_bulk", n))

    def prefill(self, n: int) -> None:
        self._call("prefill", n)

    def send_latency(self) -> None:
        self._call("send_latency")

    def worker_command(self) -> list[str]:
        return list(self._call("worker_command"))

    def worker_env(self) -> dict[str, str]:
        return self._env()

    def pg_prepare(self) -> None:
        self._call("pg_prepare")

    def pg_prefill(self, n: int) -> None:
        self._call("pg_prefill", n)

    def pg_state(self) -> tuple[int, int, int]:
        done, effects, dup = self._call("pg_state")
        return int(done), int(effects), int(dup)

    def seed_pass(self, n: int) -> None:
        self._call("seed_pass", n)

    def timed_pass(self) -> tuple[float, dict[str, Any]]:
        dt, result = self._call("timed_pass")
        return float(dt), dict(result)

    def pg_worker_command(self) -> list[str]:
        return list(self._call("pg_worker_command"))

    def pg_worker_env(self) -> dict[str, str]:
        return self._env()


class ReconcileHere(ReconcileRef):
    """This working tree's reconcile, driven exactly as :class:`ReconcileRef` drives the
    ref's: from its own agent process, with workers started with the same
    ``PYTHONPATH`` arrangement.

    ``--against`` uses it as the baseline instead of :class:`.reconcile_sys.Reconcile`,
    which enqueues from the harness process itself. Old and new then pay the same
    client-side costs (a pipe round trip per scenario call, an agent process that
    shares the 2 cores): comparing an in-process driver with an agent-driven one put
    5-6% on the enqueue ratios that no line of reconcile caused. The tree is this
    repository (never extracted, never deleted); the Redis database and the schema are
    the baseline's own.
    """

    def __init__(self) -> None:
        self.ref = "HEAD"
        self.commit = "working tree"
        self.name = Reconcile.name
        self.config = Reconcile.config
        self.pg_config = Reconcile.pg_config
        self.pg_schema = Reconcile.pg_schema
        self.tmp = None
        self._tree = None
        self.agent = None

    @property
    def db(self) -> int:
        return DBS[Reconcile.name]

    def _extract(self) -> Path:
        return ROOT
