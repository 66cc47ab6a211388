"""Which classes have a schedule row, and the schedule each class defines.

A ReconciledJob's row is named by its ``job_name`` and fires its pass (``every`` or
``cron``); a plain ``Job`` with ``cron`` gets a row named ``cron:<job_name>`` whose tick
enqueues it. The rows themselves live in PostgreSQL (``store/schedules.py``); this
module only maps classes to names and specs, so the scheduler, ``reconcile schedules``
and the drift check agree on both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import registry
from ..job import Job
from ..reconciled import ReconciledJob
from .cron import parse_schedule

CRON_PREFIX = "cron:"
"""Prefix of a plain cron job's schedule row (a ReconciledJob's row has none)."""


def scheduled_classes(classes: Iterable[type[Job]] | None = None) -> dict[str, type[Job]]:
    """Schedule name -> class: every ReconciledJob, and every plain Job with ``cron``."""
    out: dict[str, type[Job]] = {}
    for cls in classes if classes is not None else registry.all_classes().values():
        if issubclass(cls, ReconciledJob):
            out[cls.job_name] = cls
        elif getattr(cls, "cron", None):
            out[CRON_PREFIX + cls.job_name] = cls
    return out


def schedule_of(cls: type[Job]) -> Any:
    every = getattr(cls, "every", None) if issubclass(cls, ReconciledJob) else None
    cron = getattr(cls, "cron", None)
    return parse_schedule(every=every, cron=cron, tz=cls.tz if cron else None)
