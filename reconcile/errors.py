"""One exception tree for reconcile.

Errors a user should handle derive from :class:`ReconcileError`. Control-flow
signals that the framework raises and catches itself (never an error for the
user) live apart, under :class:`ControlFlow`, so that ``except ReconcileError``
in application code never swallows them.
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


class JobTimeout(ReconcileError):
    """A job ran longer than its class's ``timeout``: the worker gave it up (and, for a
    ReconciledJob, terminated its PostgreSQL backend so it cannot commit late)."""


class BrokerError(ReconcileError):
    """Redis refused an operation (for example OOM under ``noeviction``)."""


class ControlFlow(BaseException):
    """Signals used inside the worker; never seen by application code."""


class Shutdown(ControlFlow):
    """Raised in the fetch loop when the process is stopping."""
