"""The scenario contract: a scenario measures some metrics on one system, once per round."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..common import Sizes
from ..systems import System


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str               # "jobs/s" or "ms"
    higher_is_better: bool


@dataclass(frozen=True)
class Context:
    sizes: Sizes
    logdir: Path            # worker output goes to <logdir>/<system>.log
    say: Callable[[str], None]


class Scenario(Protocol):
    name: str
    metrics: tuple[Metric, ...]
    implemented: bool

    def skip_reason(self, system: System, metric: Metric) -> str | None:
        """Why ``system`` has no figure for ``metric`` (None: it is measured)."""

    def run(self, system: System, ctx: Context) -> dict[str, float]:
        """Measure every metric not skipped; keys are ``Metric.key``. Raises on failure."""


def worker_skip_reason(system: System) -> str | None:
    """Why a scenario that runs worker processes on Redis cannot measure ``system``."""
    if not system.uses_redis:
        return "PostgreSQL-only system"
    return None if system.runs_workers else "not a job system"
