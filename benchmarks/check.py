"""Self-check: every adapter uses the harness's service URLs, driver side and worker side.

The harness owns two URLs: ``BENCH_REDIS`` (each system on its own database number,
:func:`benchmarks.common.url`) and ``BENCH_DATABASE`` (the run's bench database, each
system in its own schema, :func:`benchmarks.pg.sa_url`). Each adapter reports, through
:meth:`System.urls`, the URLs its library objects and its worker command line actually
hold; :func:`problems` compares each with the harness's URL for that system. It runs
at the start of every benchmark run (a mismatch stops the run) and alone with
``python -m benchmarks --check``. It needs no server: nothing connects.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from . import pg
from .common import url
from .systems import System

Identity = tuple[str, ...]


def identity(u: str) -> Identity:
    """What makes two URLs the same service and database: scheme family, host, port,
    database (number or name), user, and for PostgreSQL the schema on the search_path."""
    parts = urlsplit(u)
    scheme = parts.scheme.split("+")[0]
    if scheme in ("redis", "rediss"):
        db = parts.path.lstrip("/") or parse_qs(parts.query).get("db", ["0"])[0]
        return (scheme, parts.hostname or "localhost", str(parts.port or 6379), db or "0",
                parts.username or "")
    if scheme in ("postgresql", "postgres"):
        options = unquote(parse_qs(parts.query).get("options", [""])[0])
        search_path = ""
        for opt in options.split():
            if opt.startswith("-csearch_path="):
                search_path = opt.split("=", 1)[1]
        return ("postgresql", parts.hostname or "localhost", str(parts.port or 5432),
                parts.path.lstrip("/"), parts.username or "", search_path)
    return (scheme, u)


def expected(system: System) -> dict[str, str]:
    """The harness's URL for ``system``, by scheme family."""
    out = {}
    if system.uses_redis:
        out["redis"] = url(system.db)
    if system.pg_schema:
        out["postgresql"] = pg.sa_url(system.pg_schema)
    return out


def problems(systems: list[System]) -> list[str]:
    """One line per URL an adapter uses that is not the harness's (empty: all agree)."""
    out = []
    for system in systems:
        want = expected(system)
        got = system.urls()
        if not got:
            out.append(f"{system.name}: the adapter reports no URL (System.urls)")
        for role, used in got:
            ident = identity(used)
            harness = want.get(ident[0])
            if harness is None:
                out.append(f"{system.name}: {role} uses {used!r}, a service the harness "
                           "does not give this system")
            elif ident != identity(harness):
                out.append(f"{system.name}: {role} uses {used!r}, the harness's is {harness!r}")
    return out


def report(systems: list[System]) -> str:
    """Every URL every adapter reports, one line each (for ``--check``)."""
    return "\n".join(f"  {s.name}: {role}: {used}" for s in systems for role, used in s.urls())
