"""The systems under test, in report order. Adapters import their library only in open()."""

from __future__ import annotations

from .arq_sys import Arq
from .base import System
from .celery_sys import Celery
from .dramatiq_sys import Dramatiq
from .huey_sys import Huey
from .procrastinate_sys import Procrastinate
from .psycopg_sys import RawPsycopg
from .reconcile_sys import Reconcile
from .redis_sys import RawRedis
from .rq_sys import RQ
from .saq_sys import Saq

ALL: list[type[System]] = [
    Reconcile, Dramatiq, Huey, RQ, Arq, Celery, Saq, RawRedis,  # the Redis section
    Procrastinate, RawPsycopg,  # the reconciled section only (PostgreSQL)
]
BY_NAME: dict[str, type[System]] = {cls.name: cls for cls in ALL}
BASELINE = "reconcile"

__all__ = ["ALL", "BASELINE", "BY_NAME", "System"]
