"""reconcile: background jobs on Redis, with PostgreSQL as the truth.

Public API::

    from reconcile import Job, configure, DISCARD, KILL
"""

from .config import Settings, configure, get_settings
from .errors import (
    ArgumentError,
    ConfigError,
    NotConverged,
    PayloadError,
    PayloadTooLarge,
    ReconcileError,
    UnknownJobClass,
)
from .job import DISCARD, KILL, Job
from .middleware import client_middleware, server_middleware
from .reconciled import ReconciledJob
from .worker.retry import death_handlers

__version__ = "0.1.0"

__all__ = [
    "DISCARD",
    "KILL",
    "ArgumentError",
    "ConfigError",
    "Job",
    "NotConverged",
    "PayloadError",
    "PayloadTooLarge",
    "ReconcileError",
    "ReconciledJob",
    "Settings",
    "UnknownJobClass",
    "client_middleware",
    "configure",
    "death_handlers",
    "get_settings",
    "server_middleware",
]
