"""Start-up checks and the one-line description of a server failure.

Every command of the CLI, and the start of a worker or scheduler, meets the same
failures: a server that does not answer (refused, unknown host, timeout), one that
refuses the credentials, a TLS handshake that fails, a PostgreSQL database or role that
does not exist, a Redis ACL user not allowed a command (``NOPERM``). :func:`describe`
turns each into one line naming the server (URL masked, see
:func:`reconcile.config.mask_url`), the setting it came from, and the server's reason:

    cannot reach Redis at redis://:***@127.0.0.1:6390/0 (from environment variable
    RECONCILE_REDIS_URL): Connection refused

:func:`is_permanent` says which failures waiting cannot cure (credentials, TLS,
permissions, a missing database): :func:`wait_for_servers`, used by ``reconcile
worker`` and ``reconcile scheduler`` at start, waits for a server that is not there yet
(logging one line saying what it waits for, then one line a minute) and raises at once
for a permanent failure. After a successful start both processes keep their own
retry-with-backoff on every error.

This module sends nothing itself: the pings are :meth:`Broker.ping` and
:func:`reconcile.store.engine.check_connection`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

import redis

from .backoff import Backoff
from .config import Settings, mask_url, scrub

log = logging.getLogger("reconcile.startup")

WAIT_FIRST = 0.5
"""Seconds before the first retry of a server that is not there yet; doubled up to
:data:`WAIT_MAX`."""

WAIT_MAX = 10.0
"""Longest pause between two start-up retries."""

WAIT_LOG_EVERY = 60.0
"""Seconds between two "still waiting" lines while a server stays away."""


def _redis_reason(exc: BaseException) -> str:
    text = str(exc).strip()
    # redis-py: "Error 111 connecting to 127.0.0.1:6390. Connection refused."
    m = re.match(r"^Error -?\d+ connecting to \S+?\.\s+(.+?)\.?$", text, re.S)
    return (m.group(1) if m else text).strip() or type(exc).__name__


def _pg_reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    # psycopg: 'connection failed: connection to server at "h", port 5432 failed: FATAL:  ...'
    text = re.sub(r"^connection failed:\s*", "", text)
    text = re.sub(r'^connection to server at "[^"]*", port \d+ failed:\s*', "", text)
    text = re.sub(r"^FATAL:\s+", "", text)
    first = text.splitlines()[0].strip() if text else ""
    return first or type(orig).__name__


def _redis_user(url: str) -> str:
    m = re.match(r"^[^:/?#]+://([^:@/?#]*)(?::[^@/?#]*)?@", url)
    return m.group(1) if m and m.group(1) else "default"


def is_permission_error(exc: BaseException) -> bool:
    """A Redis ACL refusal: ``NOPERM`` on a command or key, also inside a script."""
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return True
    text = str(exc)
    return isinstance(exc, redis.ResponseError) and (
        "no permissions" in text or "can't run this command" in text)


def _is_tls(exc: BaseException) -> bool:
    text = str(exc)
    return "SSL" in text or "certificate" in text or "TLS" in text


def is_db_error(exc: BaseException) -> bool:
    import sqlalchemy as sa

    return isinstance(exc, sa.exc.DBAPIError)


def describe(exc: BaseException, settings: Settings) -> str | None:
    """One line describing ``exc`` if it is a Redis or PostgreSQL failure, else None.
    The line names the server (password masked), the setting's source, and the reason;
    any password of ``settings`` in the driver's text is masked as well."""
    line = _describe(exc, settings)
    return scrub(line, settings) if line is not None else None


def _describe(exc: BaseException, settings: Settings) -> str | None:
    import sqlalchemy as sa

    r_url = f"{mask_url(settings.redis_url)} ({settings.source_of('redis_url')})"
    if is_permission_error(exc):
        user = _redis_user(settings.redis_url)
        return (f"Redis user {user!r} at {r_url} is not allowed to do this: {_redis_reason(exc)} "
                "(see the ACL rule in docs/settings.md)")
    if isinstance(exc, redis.AuthenticationError) or (
            isinstance(exc, redis.ResponseError) and str(exc).startswith(("WRONGPASS", "NOAUTH"))):
        return f"Redis at {r_url} refused the credentials: {_redis_reason(exc)}"
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        if _is_tls(exc) or (isinstance(exc, redis.TimeoutError) and settings.redis_url.startswith("rediss")):
            return f"TLS connection to Redis at {r_url} failed: {_redis_reason(exc)}"
        return f"cannot reach Redis at {r_url}: {_redis_reason(exc)}"
    if isinstance(exc, redis.RedisError):
        return f"Redis at {r_url} answered an error: {_redis_reason(exc)}"
    if isinstance(exc, sa.exc.DBAPIError):
        d_url = f"{mask_url(settings.database_url)} ({settings.source_of('database_url')})"
        reason = _pg_reason(exc)
        if isinstance(exc, sa.exc.OperationalError) and _pg_refused(reason):
            return f"PostgreSQL at {d_url} refused the connection: {reason}"
        if isinstance(exc, sa.exc.OperationalError):
            return f"cannot reach PostgreSQL at {d_url}: {reason}"
        missing_table = "reconcile_" in reason and "does not exist" in reason
        hint = " (run `reconcile db upgrade`?)" if missing_table else ""
        return f"PostgreSQL at {d_url} answered an error: {reason}{hint}"
    return None


def _pg_refused(reason: str) -> bool:
    """The server answered and said no: wrong password, unknown role or database."""
    return any(s in reason for s in (
        "does not exist", "authentication failed", "no pg_hba.conf entry", "permission denied",
        "SSL", "certificate"))


def is_permanent(exc: BaseException) -> bool:
    """True for failures that waiting cannot cure: credentials, TLS, ACL permissions,
    a missing PostgreSQL role or database. A refused connection, an unknown host or a
    timeout may be a server still starting (or DNS not yet up), so it is not."""
    import sqlalchemy as sa

    if is_permission_error(exc) or isinstance(exc, redis.AuthenticationError):
        return True
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return _is_tls(exc)
    if isinstance(exc, redis.RedisError):
        return True
    if isinstance(exc, sa.exc.OperationalError):
        return _pg_refused(_pg_reason(exc))
    return isinstance(exc, sa.exc.DBAPIError)


def wait_for_servers(
    settings: Settings,
    checks: list[tuple[str, Callable[[], object]]],
    stop: threading.Event,
    what: str,
) -> bool:
    """Run each ``(server name, check)`` until it passes; True once all did, False if
    ``stop`` was set first. A transient failure is logged in one line (``what`` waits
    for ...) and retried with backoff; a permanent one (:func:`is_permanent`) is raised.
    """
    for server, check in checks:
        backoff, logged_at = Backoff(WAIT_FIRST, WAIT_MAX), -1e18
        while True:
            try:
                check()
                break
            except Exception as exc:
                if is_permanent(exc) or describe(exc, settings) is None:
                    raise
                now = time.monotonic()
                if now - logged_at >= WAIT_LOG_EVERY:
                    logged_at = now
                    log.warning("%s is waiting for %s: %s; retrying until it answers",
                                what, server, describe(exc, settings))
            if stop.wait(backoff.next()):
                return False
        if logged_at > -1e18:
            log.info("%s: %s answers now", what, server)
    return True
