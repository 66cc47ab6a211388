"""Moved: promotion and reaping run in worker processes and live in
:mod:`reconcile.worker.maintenance`; this name stays for existing imports."""

from ..worker.maintenance import PROMOTE_BATCH, Maintenance

__all__ = ["PROMOTE_BATCH", "Maintenance"]
