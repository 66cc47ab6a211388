"""Name <-> class allowlist.

Every concrete subclass of :class:`~reconcile.job.Job` registers itself here when
its module is imported, under ``module.QualName`` (or its ``name`` attribute). A
worker only runs classes found here: it never imports a module named in a payload,
so Redis content cannot make a worker load code.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .errors import RegistryConflict, UnknownJobClass

if TYPE_CHECKING:
    # for types only: the registry hands the worker the classes it runs, typed as Job;
    # at run time job.py imports this module, never the reverse
    from .job import Job

_lock = threading.Lock()
_classes: dict[str, type[Job]] = {}


def job_name(cls: type) -> str:
    """The registry name of ``cls``: its ``name`` attribute if set, else ``module.QualName``."""
    explicit = cls.__dict__.get("name")
    if isinstance(explicit, str) and explicit:
        return explicit
    return f"{cls.__module__}.{cls.__qualname__}"


def register(cls: type[Job]) -> str:
    """Add ``cls``; re-registering the same qualified class (a reload) replaces it."""
    name = job_name(cls)
    with _lock:
        old = _classes.get(name)
        if old is not None and old is not cls and (
            old.__module__ != cls.__module__ or old.__qualname__ != cls.__qualname__
        ):
            raise RegistryConflict(
                f"job name {name!r} is used by both {old.__module__}.{old.__qualname__} and "
                f"{cls.__module__}.{cls.__qualname__}; set a distinct `name` on one of them"
            )
        _classes[name] = cls
    return name


def resolve(name: str) -> type[Job]:
    """The class registered as ``name``; :class:`UnknownJobClass` if none is."""
    try:
        return _classes[name]
    except KeyError:
        raise UnknownJobClass(f"unknown job class {name!r} (not imported by this worker's --app)") from None


def find(name: str, base: type | None = None, kind: str = "job class") -> type[Job]:
    """The class an operator means by ``name``: the one registered under that full
    name, or the only one whose class name (the last dotted part) it is; only
    subclasses of ``base`` are considered, if given. LookupError, naming ``kind`` and
    listing the candidates, when none or several match (the CLI's ``--job``)."""
    with _lock:
        candidates = {full: cls for full, cls in _classes.items() if base is None or issubclass(cls, base)}
    matches = [c for full, c in candidates.items() if full == name or full.rsplit(".", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise LookupError(f"{name!r} is ambiguous: it is the class name of "
                          f"{', '.join(sorted(c.job_name for c in matches))}; give the full name")
    raise LookupError(f"{name!r} is not a {kind} of the app; {close_matches(name, candidates)}")


def close_matches(name: str, known: Iterable[str]) -> str:
    """``did you mean ...?`` with the names in ``known`` (full or their last dotted
    part) closest to ``name``, or the list of known names when none is close."""
    known = sorted(known)
    by_short: dict[str, list[str]] = {}
    for full in known:
        by_short.setdefault(full.rsplit(".", 1)[-1], []).append(full)
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    for short in difflib.get_close_matches(name.rsplit(".", 1)[-1], list(by_short), n=3, cutoff=0.6):
        near += [f for f in by_short[short] if f not in near]
    if near:
        return f"did you mean {', '.join(near[:3])}?"
    return f"known: {', '.join(known) or 'none'}"


def all_classes() -> dict[str, type[Job]]:
    """A snapshot of the registry."""
    with _lock:
        return dict(_classes)


def unregister(name: str) -> None:
    """Remove a name (tests that define throwaway classes)."""
    with _lock:
        _classes.pop(name, None)
