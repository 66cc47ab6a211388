"""Names for the protocol's values: what one delivery of a job came to.

:class:`Outcome` is what ``Job.execute`` returns and what the executor turns into a
settlement (see the table in :mod:`reconcile.worker.executor`); its values are the
strings the logs, the dashboard and the counters use, so an ``Outcome`` compares equal
to its name (``Outcome.LOCK_BUSY == "lock_busy"``).

:data:`COUNTERS` are the names of the outcome counters kept in Redis (``{ns}:stat:<name>``),
in the order ``reconcile status``, ``/status.json`` and ``/metrics`` show them.

This module imports nothing of reconcile's, so every layer can use it.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """What one delivery came to. ``NOT_CONVERGED`` and ``FAILED`` are failures (settled
    by the retry rules); the others end the delivery without a retry."""

    DONE = "done"
    """perform ran and committed (a ReconciledJob: the key is no longer pending)."""
    ALREADY_DONE = "already_done"
    """ReconciledJob step 2: the key was no longer pending; nothing ran."""
    LOCK_BUSY = "lock_busy"
    """ReconciledJob step 1: another delivery holds the key's lock; runs again shortly."""
    DB_UNAVAILABLE = "db_unavailable"
    """The database connection was lost (not the job's fault); runs again shortly."""
    DISABLED = "disabled"
    """The ReconciledJob class is switched off: dropped, re-derived after enabling."""
    HELD = "held"
    """The plain Job class is switched off: held in the scheduled set, unchanged."""
    NOT_CONVERGED = "not_converged"
    """ReconciledJob step 4: perform returned but the key is still pending (a failure)."""
    FAILED = "failed"
    """perform raised: retried, discarded or dead by the retry rules."""


RESCHEDULED = frozenset({Outcome.LOCK_BUSY, Outcome.DB_UNAVAILABLE})
"""Outcomes re-scheduled a few seconds later without spending a retry."""

COUNTERS: tuple[str, ...] = (
    "processed", "failed", Outcome.ALREADY_DONE.value, Outcome.LOCK_BUSY.value,
    Outcome.DB_UNAVAILABLE.value, Outcome.DISABLED.value, Outcome.HELD.value,
)
"""The outcome counters in Redis: ``processed`` (acked as done) and ``failed`` are
counted by ``fetch.lua`` as it settles; the others by the executor."""
