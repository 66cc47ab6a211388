"""Settings: one frozen object, resolved once.

Resolution order, highest first:

1. values passed in code (``reconcile.configure(...)``) or as CLI flags;
2. environment variables ``RECONCILE_<FIELD>`` (``RECONCILE_REDIS_URL`` ...);
3. ``[tool.reconcile]`` in the nearest ``pyproject.toml`` at or above the
   working directory;
4. the defaults documented on each field below.

Every value is validated when settings are built; a bad value raises
:class:`~reconcile.errors.ConfigError` naming the setting, the value and where it came
from (numbers must be finite and in range; URLs must parse). Each built
:class:`Settings` remembers where each value came from (:meth:`Settings.source_of`), so
start-up errors can name the environment variable or file to fix.

Passwords never leave this module in clear: :func:`mask_url` is the one helper every
message, log line and error of reconcile uses to show a URL, and ``repr(Settings)``
masks both URLs.

The module is over 400 lines because :class:`Settings` declares and documents every
field where it is (about 210 lines, most of them field docstrings, which
docs/settings.md is checked against field for field); the URL checks and the
resolution and validation of values are the other ~370, kept beside the fields they
check (the ``redis+sentinel://`` form is parsed in :mod:`reconcile.sentinel_url`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

from .errors import ConfigError
from .sentinel_url import SCHEME as SENTINEL_SCHEME
from .sentinel_url import SentinelURLError, parse_sentinel_url

ENV_PREFIX = "RECONCILE_"

REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")
"""URL schemes accepted for ``redis_url``. ``redis+sentinel`` is parsed by
:mod:`reconcile.sentinel_url`; a later version may add ``redis+cluster``: the check
below reads this tuple, so adding one is one line here plus the client that serves it
in ``broker.make_client``."""

MASK = "***"


def mask_url(url: str) -> str:
    """``url`` with its password (userinfo and any ``password=`` or ``sentinel_password=``
    query value) replaced
    by ``***``; everything else, user name included, is kept so the culprit stays
    recognisable. SQLAlchemy URLs go through ``URL.render_as_string(hide_password=True)``.
    A string that does not parse as a URL is returned with anything after ``:`` in its
    userinfo masked, so a malformed URL cannot leak its secret either."""
    if url.startswith("postgresql"):
        try:
            import sqlalchemy as sa

            return str(sa.engine.make_url(url).render_as_string(hide_password=True))
        except Exception:  # not a URL SQLAlchemy can parse: mask it by hand below
            pass
    masked = re.sub(r"^([^:/?#]+://[^:@/?#]*):[^@/?#]*@", rf"\1:{MASK}@", url)
    return re.sub(r"([?&](?:sentinel_)?password=)[^&#]*", rf"\g<1>{MASK}", masked)


def url_secrets(url: str) -> list[str]:
    """The passwords a URL carries (userinfo, ``password=`` and ``sentinel_password=``
    query values), for
    :func:`scrub`. Empty for a URL that carries none."""
    found = []
    m = re.match(r"^[^:/?#]+://[^:@/?#]*:([^@/?#]*)@", url)
    if m and m.group(1):
        found.append(m.group(1))
    found += [v for v in re.findall(r"[?&](?:sentinel_)?password=([^&#]*)", url) if v]
    return found


def scrub(text: str, settings: Settings | None = None) -> str:
    """``text`` with the passwords of ``settings``' URLs (default: this process's
    settings, if built) replaced by ``***``: for messages reconcile did not write
    itself (a driver's exception text) before they are shown or logged."""
    settings = settings if settings is not None else _current
    if settings is None:
        return text
    for url in (settings.redis_url, settings.database_url, settings.pending_database_url):
        for secret in url_secrets(url):
            # drivers may show the percent-decoded form
            for form in {secret, unquote(secret)}:
                if form:
                    text = text.replace(form, MASK)
    return text


def _shown(name: str, value: Any) -> Any:
    """A setting's value as messages show it: URLs masked."""
    return mask_url(value) if name.endswith("_url") and isinstance(value, str) else value


@dataclass(frozen=True)
class Settings:
    """Every tunable of reconcile, with its default."""

    redis_url: str = "redis://localhost:6379/0"
    """Redis holding the queues: ``redis://``, ``rediss://`` (TLS), ``unix://`` or
    ``redis+sentinel://[user:password@]host1:26379,host2:26379/<service>/<db>`` (the
    primary found through Sentinel and followed across failovers; query parameters
    ``sentinel_password``, ``sentinel_username``, ``ssl``, ``sentinel_ssl``, see
    docs/deployment.md). Default ``redis://localhost:6379/0``."""

    redis_socket_timeout: float = 0.0
    """Seconds a Redis command may wait for its reply before the connection is taken for
    dead (redis-py's ``socket_timeout``); 0: no limit (a reply is awaited as long as TCP
    keepalive sees the peer). Blocking waits (a worker's idle BLMOVE / BLPOP of
    ``idle_wait`` seconds) must fit inside it, so a value below ``idle_wait`` + 1 s is
    refused at start-up. Default 0."""

    database_url: str = "postgresql+psycopg://localhost:5432/postgres"
    """PostgreSQL (SQLAlchemy URL, psycopg 3 driver) holding the truth.
    Default ``postgresql+psycopg://localhost:5432/postgres``. ReconciledJobs (enqueue
    reads their kill switch, workers run them), the scheduler and the ``db``, ``run``,
    ``flush``, ``runs``, ``quarantine``, ``disable`` and ``enable`` commands connect to
    it; a worker running only plain Jobs never does."""

    app: str = ""
    """The modules that define your job classes, comma-separated (``"myapp.jobs"``),
    imported by every ``reconcile`` command when it is not given ``--app``; commands
    check job names against the classes they register. Default "" (none)."""

    namespace: str = "reconcile"
    """Prefix of every Redis key, used as the hash tag ``{namespace}``. Default ``reconcile``."""

    concurrency: int = 10
    """Worker threads per ``reconcile worker`` process (``-c``). Default 10."""

    prefetch: int = 0
    """Jobs a worker holds leased beyond those running. 0 means "equal to concurrency".
    Default 0."""

    shutdown_timeout: float = 25.0
    """Seconds a stopping worker waits for running jobs before pushing them back (``-t``).
    Default 25."""

    lease_seconds: float = 20.0
    """How long a worker's leases live without a heartbeat. A SIGKILLed worker's jobs
    return to their queues within ``lease_seconds`` plus one reaper interval (at most
    ``3/8 * lease_seconds``), so within 27.5 s by default. Default 20."""

    poll_interval: float = 5.0
    """Average seconds between promotions of the scheduled and retry sets in each
    worker and each scheduler (randomised 0.5x..1.5x, like Sidekiq). Default 5."""

    idle_wait: float = 2.0
    """Longest a blocked idle fetch waits before checking its queues again (a new job
    wakes it at once; this only bounds missed wake-ups). Default 2."""

    max_payload_bytes: int = 1_000_000
    """Largest encoded payload accepted at enqueue and at fetch. Default 1,000,000."""

    dead_max_jobs: int = 10_000
    """Newest dead jobs kept. Default 10,000."""

    dead_timeout_seconds: float = 180 * 24 * 3600.0
    """Oldest dead job kept, in seconds. Default 6 months (15,552,000 s)."""

    max_recoveries: int = 3
    """A job recovered from crashed workers more often than this is a poison pill and
    goes to the dead set. Default 3."""

    bulk_batch_size: int = 1000
    """Jobs per Redis round trip in ``perform_bulk``. Default 1000."""

    enqueue_replicas: int = 0
    """Replicas that must hold an enqueue before it returns: each enqueue (one per
    ``perform_bulk`` batch) sends Redis ``WAIT <enqueue_replicas> <timeout>`` in the
    same round trip and raises :class:`reconcile.errors.NotReplicated` when fewer
    replicas acknowledged in time. 0: no wait (a plain job acknowledged by a primary that
    fails over before replicating it is lost). Default 0."""

    enqueue_replicas_timeout: float = 1.0
    """Seconds the ``WAIT`` of ``enqueue_replicas`` waits for the replicas (sent to
    Redis in milliseconds, at least 1). Default 1."""

    default_retry: int = 25
    """Retries for ``retry = True``. Default 25."""

    pass_stale_seconds: float = 300.0
    """A pass claim older than this is considered abandoned (its scheduler died) and the
    schedule may be claimed again. Default 300."""

    runs_keep_days: float = 30.0
    """History of reconcile passes kept in ``reconcile_runs``, in days. Default 30."""

    pending_database_url: str = ""
    """A PostgreSQL URL (a read replica) for the scans of reconcile passes; empty: they
    read ``database_url``. Safe with a lagging replica: a key the replica still shows
    as pending is re-checked on the primary under its lock (``already_done``), and one
    it does not show yet is found by a later pass. Each pass records the replica's lag.
    Default "" (none)."""

    pass_high_water: int = 0
    """Back-pressure of passes: a pass stops enqueuing once its class's backlog (the
    length of its queue, plus the keys this pass put in the scheduled set when the class
    has a ``jitter``) is above this many jobs, and records the rest as deferred; the
    next pass finds them. A class's ``high_water`` option overrides it. 0: no limit.
    Default 0."""

    database_connect_timeout: float = 10.0
    """Seconds to wait for a PostgreSQL connection before failing (psycopg's
    ``connect_timeout``; a ``connect_timeout`` in ``database_url``'s query wins).
    Default 10."""

    database_pooler: str = "none"
    """The connection pooler between reconcile and PostgreSQL: ``none``, ``session``
    (PgBouncer ``pool_mode = session``: one server connection per client connection)
    or ``transaction`` (``pool_mode = transaction``: a server connection per
    transaction). ``transaction`` turns off every server-side prepared statement
    (reconcile's ``prepared_checks`` and psycopg's automatic ones: ``prepare_threshold``
    is None on every connection) and has the watchdog find a delivery's backend with
    ``pg_backend_pid()`` inside its transaction; ``session`` keeps prepared statements
    and reads each connection's backend once. With ``none`` the first connection of
    each engine compares ``pg_backend_pid()`` with the pid libpq reports; if they
    differ a pooler is in between, the process acts as with ``transaction`` and logs
    one warning naming this setting. Default ``none``."""

    database_prepare_threshold: str = "5"
    """psycopg's ``prepare_threshold`` for every connection reconcile opens: executions
    of one statement after which psycopg prepares it on the server (``0``: at the
    first), or ``none`` to never prepare. Forced to ``none`` when ``database_pooler``
    is (or is detected as) ``transaction``; a ``prepare_threshold`` in
    ``database_url``'s query wins over this. Default ``5`` (psycopg's)."""

    database_application_name: str = ""
    """``application_name`` of reconcile's PostgreSQL connections, shown in
    ``pg_stat_activity``; empty leaves libpq's default. An ``application_name`` in
    ``database_url``'s query wins. Default empty."""

    prepared_checks: bool = True
    """Run a ReconciledJob's key checks (steps 2 and 4 of the protocol) as prepared
    statements, made once per pooled connection and job class with SQL ``PREPARE``:
    PostgreSQL then skips parsing and planning them for every delivery. Set it false
    behind a connection pooler in transaction mode (PgBouncer), where a statement
    prepared on one server connection is unknown on the next; a worker that meets such
    a missing statement switches them off by itself (logged) and loses nothing. Default
    True."""

    fast_paths: bool = True
    """Run the fast path of each step that has a reference path beside it; false runs
    the references, with the same effects, to compare the two or to rule a fast path
    out while diagnosing. The pairs (fast; reference): a ReconciledJob delivery's
    protocol (two simple queries on the driver connection, the key check compiled once
    per class; :class:`reconcile.store.delivery.SessionDelivery`, one SQLAlchemy
    statement per step), payload building at enqueue and in passes (bytes from a
    per-call template; one dict per job, encoded by orjson,
    :meth:`reconcile.payload.PayloadTemplate.reference`) and a pass's keyset pages
    (read on the driver connection; :func:`reconcile.store.pending.page`). Default
    True."""

    switch_cache_seconds: float = 5.0
    """How long a process caches kill switches read from PostgreSQL. Default 5."""

    log_level: str = "INFO"
    """Logging level of ``reconcile`` commands. Default ``INFO``."""

    log_format: str = "text"
    """How ``reconcile`` commands write their log: ``"text"`` lines, or ``"json"``, one
    JSON object per line with ``ts``, ``level``, ``logger``, ``msg`` and, for lines
    written while a job runs (the application's own included), ``jid``, ``class``,
    ``queue``, ``key``, ``attempt``. Default ``"text"``."""

    tracing: str = "off"
    """OpenTelemetry tracing: ``"off"``, or ``"otel"`` (needs the ``otel`` extra,
    ``opentelemetry-api``): spans ``enqueue``, ``perform`` and ``pass`` through the
    process's global TracerProvider, linked by a ``traceparent`` field in each payload
    (:mod:`reconcile.tracing`). Default ``"off"``."""
    log_job_lines: bool = False
    """Log a ``start`` and a ``done`` line (logger ``reconcile.job``, INFO) for every job
    a worker runs, for audit: the done line carries ``outcome`` and ``duration_ms``, and
    in the ``json`` format both carry ``jid``, ``class``, ``queue``, ``key``,
    ``attempt``. Two records per job: off by default (Sidekiq's default is on).
    Default False."""

    retry_traceback_log_level: str = "DEBUG"
    """Level at which a worker logs the traceback of a failure that will be retried
    (its WARNING line is one line; a final failure, dead or discarded, is logged at
    ERROR with its traceback whatever this says). One of DEBUG, INFO, WARNING, ERROR,
    CRITICAL. Default DEBUG."""

    metrics_port: int = 0
    """TCP port on which ``reconcile worker`` and ``reconcile scheduler`` serve
    Prometheus metrics (``/metrics``) and their health checks (``/livez``, ``/readyz``);
    ``--metrics-port`` on both commands. 0: no server (and a worker records no metrics,
    unless ``PROMETHEUS_MULTIPROC_DIR`` is set: see docs/metrics.md). Default 0."""

    metrics_host: str = "0.0.0.0"
    """Address the metrics server binds (``metrics_port``). The default serves every
    interface, as Prometheus exporters do, so a scraper or a Kubernetes probe on
    another host reaches it; ``127.0.0.1`` keeps it local. Default ``0.0.0.0``."""

    max_schedule_seconds: float = 5 * 365 * 86_400.0
    """Furthest ahead ``perform_in``, ``perform_at`` and ``set(wait=, wait_until=)``
    may schedule a job, in seconds; later (or non-finite) run times raise
    ``ArgumentError``: they are almost always a unit mistake (milliseconds for
    seconds) and would sit in the scheduled set forever. Default 5 years
    (157,680,000 s)."""

    def with_overrides(self, **values: Any) -> Settings:
        """Return a copy with ``values`` applied (validated), ignoring ``None`` values.
        The copy remembers this one's sources, those of ``values`` being ``code``."""
        clean = {k: v for k, v in values.items() if v is not None}
        sources = dict(getattr(self, "_sources", {})) | {k: "code" for k in clean}
        return _build(dataclasses.asdict(self) | clean, sources)

    def source_of(self, name: str) -> str:
        """Where setting ``name`` came from: ``environment variable RECONCILE_...``,
        ``[tool.reconcile] in <file>``, ``code or command line``, ``code`` or
        ``default``. Not part of equality: two settings with the same values are equal."""
        sources: Mapping[str, str] = getattr(self, "_sources", {})
        return sources.get(name, "default")

    def __repr__(self) -> str:
        # a Settings in a log line or traceback must not show the URLs' passwords
        shown = ", ".join(
            f"{f.name}={_shown(f.name, getattr(self, f.name))!r}" for f in fields(self)
        )
        return f"Settings({shown})"

    @property
    def effective_prefetch(self) -> int:
        return self.prefetch or self.concurrency


_FIELD_TYPES: dict[str, type] = {
    f.name: type(f.default) for f in fields(Settings)
}


def _coerce(name: str, raw: Any, source: str) -> Any:
    want = _FIELD_TYPES[name]
    try:
        if want is bool:
            if isinstance(raw, str):
                if raw.lower() in ("1", "true", "yes", "on"):
                    return True
                if raw.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(raw)
            return bool(raw)
        if want is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if want is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            value = float(raw)
            if not math.isfinite(value):
                # float() accepts "nan" and "inf": a lease of nan seconds never expires
                # and compares false with everything, so refuse them by name
                raise ConfigError(
                    f"setting {name!r} from {source} must be a finite number, got {raw!r}"
                )
            return value
        if want is str:
            if name == "database_prepare_threshold" and isinstance(raw, int) and not isinstance(raw, bool):
                return str(raw)  # an int from code is the same value as its text
            if name == "database_prepare_threshold" and raw is None:
                return "none"
            if not isinstance(raw, str):
                raise ValueError(raw)
            return raw
    except (TypeError, ValueError, OverflowError):
        shown = _shown(name, raw)
        raise ConfigError(
            f"setting {name!r} from {source} must be a {want.__name__}, got {shown!r}"
        ) from None
    return raw


def _check(values: dict[str, Any], sources: Mapping[str, str]) -> None:
    def bad(name: str, why: str) -> ConfigError:
        shown = _shown(name, values[name])
        return ConfigError(
            f"setting {name!r} (from {sources.get(name, 'default')}) {why}, got {shown!r}"
        )

    for name in ("concurrency", "dead_max_jobs", "bulk_batch_size", "max_payload_bytes"):
        if values[name] < 1:
            raise bad(name, "must be at least 1")
    for name in ("prefetch", "max_recoveries", "default_retry", "pass_high_water",
                 "enqueue_replicas", "redis_socket_timeout"):
        if values[name] < 0:
            raise bad(name, "must not be negative")
    for name in ("lease_seconds", "poll_interval", "idle_wait", "dead_timeout_seconds",
                 "pass_stale_seconds", "runs_keep_days", "database_connect_timeout",
                 "enqueue_replicas_timeout"):
        if values[name] <= 0:
            raise bad(name, "must be positive")
    if values["lease_seconds"] < 0.5:
        # leases are Redis PX values in ms, refreshed every third of the lease
        raise bad("lease_seconds", "must be at least 0.5")
    for name in ("shutdown_timeout", "switch_cache_seconds"):
        if values[name] < 0:
            raise bad(name, "must not be negative")
    if values["database_pooler"] not in POOLER_MODES:
        raise bad("database_pooler", f"must be one of {', '.join(POOLER_MODES)}")
    if prepare_threshold_problem(values["database_prepare_threshold"]):
        raise bad("database_prepare_threshold", "must be a whole number >= 0 or none")
    why = _redis_url_problem(values["redis_url"])
    if why:
        raise bad("redis_url", why)
    why = socket_timeout_problem(values["redis_socket_timeout"], values["idle_wait"])
    if why:
        raise bad("redis_socket_timeout", why)
    for name in ("database_url", "pending_database_url"):
        if name == "pending_database_url" and not values[name]:
            continue  # empty: passes read database_url
        if not values[name].startswith("postgresql"):
            raise bad(name, "must be a PostgreSQL SQLAlchemy URL (postgresql+psycopg://...)")
        try:
            import sqlalchemy as sa

            sa.engine.make_url(values[name])
        except Exception as exc:  # ArgumentError, ValueError (bad port): a malformed URL
            raise bad(name, f"is not a valid URL ({type(exc).__name__})") from None
        why = database_url_problem(values[name], values["database_pooler"])
        if why:
            raise bad(name, why)
    ns = values["namespace"]
    if not ns or any(c in ns for c in "{}: \t\n"):
        raise bad("namespace", "must be non-empty without braces, colons or spaces")
    # max_schedule_seconds: a finite horizon (inf would switch the check off silently)
    horizon = values["max_schedule_seconds"]
    if not horizon > 0 or horizon == float("inf"):
        raise bad("max_schedule_seconds", "must be a finite positive number of seconds")
    if not 0 <= values["metrics_port"] <= 65535:
        raise bad("metrics_port", "must be a TCP port 1..65535, or 0 for no metrics server")
    if not values["metrics_host"].strip():
        raise bad("metrics_host", "must be an address to bind, such as 0.0.0.0 or 127.0.0.1")
    if values["log_format"] not in ("text", "json"):
        raise bad("log_format", "must be text or json")
    if values["tracing"] not in ("off", "otel"):
        raise bad("tracing", "must be off or otel")
    if values["tracing"] == "otel" and not _otel_installed():
        raise bad("tracing", "needs the otel extra (pip install 'reconcile-jobs[otel]'): "
                             "opentelemetry-api is not installed")
    for name in ("log_level", "retry_traceback_log_level"):
        if values[name].upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise bad(name, "must be DEBUG, INFO, WARNING, ERROR or CRITICAL")


def _otel_installed() -> bool:
    """Whether ``opentelemetry-api`` can be imported (looked up, not imported)."""
    import importlib.util

    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except ImportError:  # no "opentelemetry" package at all
        return False


POOLER_MODES = ("none", "session", "transaction")
"""Values of ``database_pooler``."""

OPTIONS_UNDER_POOLER = (
    "sets options (a startup parameter PgBouncer refuses, or ignores with "
    "ignore_startup_parameters, so a search_path there would be lost); behind a pooler "
    "set it on the server instead: ALTER ROLE <user> [IN DATABASE <db>] SET search_path = ..."
)
"""Why ``options`` in ``database_url`` is refused behind a pooler, and the alternative."""


def prepare_threshold_problem(raw: str) -> bool:
    """Whether ``raw`` is not a valid ``prepare_threshold`` (``none`` or an int >= 0)."""
    return not (raw.lower() == "none" or (raw.isascii() and raw.isdigit()))


def prepare_threshold_value(raw: str) -> int | None:
    """``raw`` (checked by :func:`prepare_threshold_problem`) as psycopg takes it."""
    return None if raw.lower() == "none" else int(raw)


def database_url_problem(url: str, pooler: str) -> str | None:
    """Why the driver arguments in ``url``'s query are unusable, or None: a
    ``prepare_threshold`` that is not ``none`` or an int >= 0, a ``connect_timeout``
    that is not a positive whole number, or (``pooler`` not ``none``) ``options``."""
    import sqlalchemy as sa

    query = sa.engine.make_url(url).query
    threshold = query.get("prepare_threshold")
    if threshold is not None and (not isinstance(threshold, str) or prepare_threshold_problem(threshold)):
        return f"has prepare_threshold={threshold!r} in its query (allowed: none or a whole number >= 0)"
    timeout = query.get("connect_timeout")
    if timeout is not None and not (isinstance(timeout, str) and timeout.isdigit() and int(timeout) > 0):
        return f"has connect_timeout={timeout!r} in its query (allowed: a whole number of seconds > 0)"
    if pooler != "none" and "options" in query:
        return f"{OPTIONS_UNDER_POOLER} (database_pooler is {pooler!r})"
    return None


BLOCKING_MARGIN = 1.0
"""Seconds a blocking command's reply may take beyond its own timeout (Redis answers a
timed-out BLMOVE at its next clock tick, then the reply crosses the network)."""


def socket_timeout_problem(socket_timeout: float, idle_wait: float) -> str | None:
    """Why ``redis_socket_timeout`` cannot serve a worker's blocking waits, or None.
    The idle BLMOVE / BLPOP waits ``idle_wait`` seconds for its reply: a socket timeout
    shorter than that (plus :data:`BLOCKING_MARGIN`) would cut every idle wait and log a
    Redis error every few seconds."""
    if socket_timeout and socket_timeout < idle_wait + BLOCKING_MARGIN:
        return (f"must be 0 (no limit) or at least idle_wait + {BLOCKING_MARGIN:g} s "
                f"= {idle_wait + BLOCKING_MARGIN:g} s: an idle worker blocks idle_wait = "
                f"{idle_wait:g} s in BLMOVE/BLPOP, and a shorter socket timeout would fail "
                "every such wait; lower idle_wait or raise this")
    return None


def _redis_url_problem(url: str) -> str | None:
    """Why ``url`` is not a usable Redis URL, or None. Checked here rather than left to
    redis-py, which reads ``redis://h:6379/abc`` as database 0 and an unknown scheme as
    a ValueError with the whole URL (password included) in its message."""
    allowed = ", ".join(f"{s}://" for s in REDIS_SCHEMES)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in REDIS_SCHEMES:
        return f"must start with one of {allowed}"
    if scheme == SENTINEL_SCHEME:
        try:
            parse_sentinel_url(url)
        except SentinelURLError as exc:
            return str(exc)
        return None
    try:
        parts: SplitResult = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        return "has a port that is not a number 0..65535"
    if scheme == "unix":
        if not parts.path:
            return "must name a socket path (unix:///path/to/redis.sock)"
        return None
    if parts.path not in ("", "/") and not re.fullmatch(r"/\d+", parts.path):
        return "must end in a database number (redis://host:6379/0), not a path"
    return None


def _build(values: dict[str, Any], sources: Mapping[str, str]) -> Settings:
    coerced = {
        k: _coerce(k, v, sources.get(k, "default")) for k, v in values.items()
    }
    _check(coerced, sources)
    settings = Settings(**coerced)
    # not a field: sources take no part in equality and hashing (brokers and engines
    # are cached by settings), and with_overrides carries them over
    object.__setattr__(settings, "_sources", dict(sources))
    return settings


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` at or above ``start`` (default: the working dir)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    pyproject: Path | bool | None = True,
    overrides_source: str = "code or command line",
) -> Settings:
    """Resolve settings: ``overrides`` > ``env`` > ``[tool.reconcile]`` > defaults.

    ``pyproject=True`` looks for the nearest file; a path uses that file; ``None`` or
    ``False`` skips it. ``None`` values in ``overrides`` are ignored (unset CLI flags).
    ``overrides_source`` is how errors name where ``overrides`` came from (the CLI
    passes ``command line``). A malformed pyproject.toml raises ConfigError with the
    file name and tomllib's line and column.
    """
    env = os.environ if env is None else env
    names = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    path = find_pyproject() if pyproject is True else (pyproject or None)
    if isinstance(path, Path) and path.is_file():
        try:
            with path.open("rb") as fh:
                document = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            # tomllib's message ends in "(at line L, column C)"
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        tool = document.get("tool", {})
        table = tool.get("reconcile", {}) if isinstance(tool, dict) else {}
        if not isinstance(table, dict):
            raise ConfigError(f"[tool.reconcile] in {path} must be a table, got {table!r}")
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in names:
                raise ConfigError(f"unknown setting {key!r} in [tool.reconcile] of {path}")
            values[name] = value
            sources[name] = f"[tool.reconcile] in {path}"

    for name in names:
        var = ENV_PREFIX + name.upper()
        if var in env:
            values[name] = env[var]
            sources[name] = f"environment variable {var}"

    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in names:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = value
        sources[name] = overrides_source

    base = {f.name: getattr(Settings(), f.name) for f in fields(Settings)}
    return _build(base | values, sources)


_lock = threading.Lock()
_current: Settings | None = None


def configure(**values: Any) -> Settings:
    """Set this process's settings in code (highest precedence) and return them.

    Later calls replace earlier ones; environment and pyproject still fill the
    fields not given here. Cached brokers and engines are rebuilt on next use.
    """
    global _current
    settings = load_settings(values)
    with _lock:
        _current = settings
    return settings


def use_settings(settings: Settings) -> None:
    """Install an already built :class:`Settings` (used by the CLI and tests)."""
    global _current
    with _lock:
        _current = settings


def current_settings() -> Settings | None:
    """This process's settings if already built or installed, else None (never loads:
    for error reporting, which must not fail on a bad setting itself)."""
    return _current


def get_settings() -> Settings:
    """This process's settings, loaded from environment and pyproject on first use."""
    global _current
    if _current is None:
        with _lock:
            if _current is None:
                _current = load_settings()
    return _current
