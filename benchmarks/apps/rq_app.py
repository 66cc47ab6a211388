"""rq job functions (rq imports them by dotted path)."""

from __future__ import annotations

from .. import probe


def noop(i: int) -> None:
    probe.hit()


def lat(t0: float) -> None:
    probe.latency(t0)
