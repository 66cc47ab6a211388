"""One exception tree for reconcile.

Every error reconcile raises on purpose derives from :class:`ReconcileError`. The
engine has no control-flow exceptions: outcomes such as "already done" or "lock busy"
are return values, so ``except ReconcileError`` in application code never swallows
engine signalling.
"""

from __future__ import annotations


class ReconcileError(Exception):
    """Base of every error reconcile raises on purpose."""


class ConfigError(ReconcileError):
    """A setting is missing or malformed. The message names the setting."""


class PayloadError(ReconcileError):
    """A job payload cannot be built or read (bad args, too large, malformed JSON)."""


class ArgumentError(PayloadError, TypeError):
    """An enqueue argument is not JSON-native. The message names the argument and its type."""


class InvalidKey(ArgumentError):
    """A ReconciledJob key value cannot take its column's canonical form losslessly
    (see :mod:`reconcile.keys`). The message names the class, the key column, its type
    and the value. In a worker such a delivery goes to the dead set with this reason
    and is not quarantined."""


class PayloadTooLarge(PayloadError):
    """An encoded payload exceeds ``Settings.max_payload_bytes``."""


class UnknownJobClass(PayloadError):
    """A payload names a class that is not in the registry (the allowlist)."""


class RegistryConflict(ReconcileError):
    """Two different job classes claim the same registry name."""


class NotConverged(ReconcileError):
    """A ReconciledJob's perform returned but its key is still pending.

    The transaction is rolled back and the delivery is retried like any failure;
    this is what catches a perform that does not make its own effect visible.
    """


class CheckGone(ReconcileError):
    """Internal to a ReconciledJob delivery: its prepared commit check was deallocated
    during perform (psycopg deallocates every prepared statement after a ``ROLLBACK TO
    SAVEPOINT`` or DDL once it has prepared statements of its own). The transaction is
    aborted, nothing was committed, and the delivery runs again at once with that
    check sent as SQL; never raised to the application."""


class JobTimeout(ReconcileError):
    """A job ran longer than its class's ``timeout``: the worker gave it up (and, for a
    ReconciledJob, terminated its PostgreSQL backend so it cannot commit late)."""


class WorkerCrashed(ReconcileError):
    """Recorded for a job recovered from crashed workers more than ``max_recoveries`` times."""


class PendingQueryError(ReconcileError):
    """A ReconciledJob's ``pending()`` did not return a usable SELECT."""


class BrokerError(ReconcileError):
    """Redis refused an operation (for example OOM under ``noeviction``)."""


class NotReplicated(BrokerError):
    """An enqueue under ``enqueue_replicas = N`` reached fewer than N replicas within
    ``enqueue_replicas_timeout``. The jobs **are** on the primary (they will run unless
    it fails over before replicating them); enqueuing them again may run them twice.

    ``acked`` replicas acknowledged, ``wanted`` were asked for, ``jobs`` were in the
    enqueue."""

    def __init__(self, acked: int, wanted: int, jobs: int, timeout: float) -> None:
        self.acked, self.wanted, self.jobs, self.timeout = acked, wanted, jobs, timeout
        super().__init__(
            f"{acked} of {wanted} replicas acknowledged the enqueue of {jobs} job(s) within "
            f"{timeout:g} s (enqueue_replicas = {wanted}): the jobs are on the primary but "
            "would be lost if it failed over now; check the replicas (INFO replication) or "
            "raise enqueue_replicas_timeout")


class ProtocolViolation(ReconcileError):
    """A ReconciledJob's perform broke the delivery protocol: it committed, rolled back
    or closed the delivery's session (or ended its transaction by other means). The
    delivery fails like any exception (retry rules apply); see docs/reconciled-jobs.md."""
