"""Which classes have a schedule row, and the schedule each class defines.

A ReconciledJob's row is named by its ``job_name`` and fires its pass (``every`` or
``cron``); a plain ``Job`` with ``cron`` gets a row named ``cron:<job_name>`` whose tick
enqueues it. The rows themselves live in PostgreSQL (``store/schedules.py``); this
module only maps classes to names and specs, so the scheduler, ``reconcile schedules``
and the drift check agree on both.

A ReconciledJob with ``partitions = N > 1`` has N rows: partition 0 keeps the row named
by its ``job_name`` (so a class that becomes partitioned keeps its row, and its history),
partition ``i`` of ``N`` (1 <= i < N) is named ``<job_name>#<i>/<N>``. Every row's spec
ends in ``, N partitions``: a scheduler running another partition count never claims
a row by its own definition (the drift rule of ``docs/scheduler.md``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .. import registry
from ..job import Job
from ..reconciled import ReconciledJob
from .cron import parse_schedule

CRON_PREFIX = "cron:"
"""Prefix of a plain cron job's schedule row (a ReconciledJob's row has none)."""


_PARTITION = re.compile(r"^(?P<job>.+)#(?P<index>[1-9][0-9]*)/(?P<count>[1-9][0-9]*)$")


@dataclass(frozen=True)
class Partition:
    """Which key range of ``job``'s pass a schedule row fires: ``index`` of ``count``."""

    job: str
    index: int
    count: int


def partition_name(job: str, index: int, count: int) -> str:
    """The schedule row of partition ``index`` (0-based) of ``count`` of ``job``."""
    return job if index == 0 else f"{job}#{index}/{count}"


def partition_names(job: str, count: int) -> list[str]:
    """Every schedule row of ``job`` split into ``count`` partitions, partition 0 first."""
    return [partition_name(job, i, count) for i in range(count)]


def partition_of(name: str, count: int = 1) -> Partition:
    """The partition a pass schedule row names: ``<job>#<i>/<n>`` is partition i of n; any
    other name is partition 0 of ``count`` (the class's, where the caller knows it)."""
    m = _PARTITION.match(name)
    if m is not None and int(m["index"]) < int(m["count"]):
        return Partition(m["job"], int(m["index"]), int(m["count"]))
    return Partition(name, 0, count)


def job_of_row(name: str) -> str:
    """The job name of a schedule row (without ``cron:`` or a partition suffix)."""
    return partition_of(name.removeprefix(CRON_PREFIX)).job


def scheduled_classes(classes: Iterable[type[Job]] | None = None) -> dict[str, type[Job]]:
    """Schedule name -> class: every ReconciledJob (one name per partition), and every
    plain Job with ``cron``."""
    out: dict[str, type[Job]] = {}
    for cls in classes if classes is not None else registry.all_classes().values():
        if issubclass(cls, ReconciledJob):
            for name in partition_names(cls.job_name, cls.partitions):
                out[name] = cls
        elif getattr(cls, "cron", None):
            out[CRON_PREFIX + cls.job_name] = cls
    return out


def pass_rows(classes: dict[str, type[Job]]) -> dict[str, list[str]]:
    """Job name -> its pass rows, from a :func:`scheduled_classes` mapping."""
    out: dict[str, list[str]] = {}
    for name, cls in classes.items():
        if not name.startswith(CRON_PREFIX):
            out.setdefault(cls.job_name, []).append(name)
    return out


def partition_shares(classes: dict[str, type[Job]],
                     running: Iterable[str]) -> tuple[dict[str, str], dict[str, int]]:
    """For a scheduler's claim: each partition row's job (its group), and how many
    partitions of each job this scheduler may claim now: one, unless one is ``running``
    here already (a scheduler runs one partition of a class at a time)."""
    here = set(running)
    groups: dict[str, str] = {}
    limits: dict[str, int] = {}
    for job, rows in pass_rows(classes).items():
        if len(rows) > 1:
            groups.update((n, job) for n in rows)
            limits[job] = 0 if any(n in here for n in rows) else 1
    return groups, limits


def schedule_of(cls: type[Job]) -> Any:
    every = getattr(cls, "every", None) if issubclass(cls, ReconciledJob) else None
    cron = getattr(cls, "cron", None)
    return parse_schedule(every=every, cron=cron, tz=cls.tz if cron else None)


def spec_of(cls: type[Job]) -> str:
    """The ``spec`` text of ``cls``'s rows: its schedule, and its partition count if > 1."""
    spec = str(schedule_of(cls))
    n = getattr(cls, "partitions", 1) if issubclass(cls, ReconciledJob) else 1
    return spec if n == 1 else f"{spec}, {n} partitions"
