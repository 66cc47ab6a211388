"""Pluggable scenarios: each module defines ``SCENARIO``; list it here to run it."""

from __future__ import annotations

from . import drain, enqueue, latency, reconciled
from .base import Context, Metric, Scenario

ALL: list[Scenario] = [enqueue.SCENARIO, drain.SCENARIO, latency.SCENARIO, reconciled.SCENARIO]
BY_NAME: dict[str, Scenario] = {s.name: s for s in ALL}
DEFAULT = [s.name for s in ALL if s.implemented]

__all__ = ["ALL", "BY_NAME", "DEFAULT", "Context", "Metric", "Scenario"]
