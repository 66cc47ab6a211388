"""The start-up banner of a worker and a scheduler: which version, Redis (password
masked), namespace, database (masked), queues and weights, concurrency, app modules and
job classes this process found, so that a process started from the wrong folder or
with the wrong environment says so in its first lines (Celery's banner does).

One log record (logger ``reconcile.banner``, INFO): a block of lines in the ``text``
format; in ``json``, one JSON object whose ``banner`` field holds :func:`banner_fields`
(the JSON formatter writes a record's ``banner`` extra as it is).
"""

from __future__ import annotations

import logging
from typing import Any

from .config import Settings, mask_url
from .registry import all_classes

log = logging.getLogger("reconcile.banner")


def banner_fields(role: str, process: str, settings: Settings, **extra: Any) -> dict[str, Any]:
    """The banner's facts: ``role`` (worker, scheduler), ``process`` (its id), then
    ``version``, ``redis``, ``namespace``, ``database`` (None without one),
    ``app_modules`` (the modules the registered job classes come from), ``classes``
    (their registry names), and ``extra`` (a worker's ``queues``, ``strict``,
    ``concurrency``; a scheduler's ``schedules``)."""
    from . import __version__  # the package imports the worker, which imports this module

    classes = all_classes()
    return {
        "role": role, "process": process, "version": __version__,
        "redis": mask_url(settings.redis_url), "namespace": settings.namespace,
        "database": mask_url(settings.database_url) if settings.database_url else None,
        **extra,
        "app_modules": sorted({cls.__module__ for cls in classes.values()}),
        "classes": sorted(classes),
    }


def banner_text(fields: dict[str, Any]) -> str:
    """The text block of :func:`banner_fields`: a head line, then one line per fact."""
    lines = [f"reconcile {fields['version']} {fields['role']} {fields['process']} starting"]
    for name, value in fields.items():
        if name in ("role", "process", "version"):
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "none"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}:{v}" for k, v in value.items()) or "none"
        lines.append(f"  {name.replace('_', ' '):<12} {'none' if value is None else value}")
    return "\n".join(lines)


def log_banner(role: str, process: str, settings: Settings, **extra: Any) -> dict[str, Any]:
    """Write the banner (one record, see the module docs); returns its fields."""
    fields = banner_fields(role, process, settings, **extra)
    log.info("%s", banner_text(fields), extra={"banner": fields})
    return fields
