"""The ``reconcile`` command. Thin: parse, build settings, call the module that owns it.

Each command is a few lines of option parsing and printing around one call to the
module that owns the task: :mod:`reconcile.control` (kill switches, flush, quarantine
release), :func:`reconcile.registry.find` (a ``JOB`` argument), :mod:`reconcile.api`,
:mod:`reconcile.sets`, :mod:`reconcile.store`, the worker, the scheduler and the
dashboard. The file is over 400 lines because it
holds every command's options and help text, which ``reconcile --help`` and
docs/cli.md show; it holds no business logic. A command imports the subsystem it runs
inside its function when that pulls in a heavy dependency ("deferred: start-up"
below): ``reconcile --help`` or ``reconcile status`` then never load the PostgreSQL
driver (about 0.25 s), alembic (about 1 s) or the web server (measured with
``python -X importtime`` on a loaded 2-core machine).

Every command takes ``--app`` (modules to import so their job classes register;
repeatable or comma-separated) and the connection flags ``--redis-url``,
``--database-url``, ``--namespace``, which override ``RECONCILE_*`` environment
variables and ``[tool.reconcile]`` in pyproject.toml.

Errors: a bad setting, an unreachable or refusing server (Redis, PostgreSQL), a TLS
failure or a Redis ACL refusal ends any command with ONE line on stderr, ``reconcile:
<what failed>``, naming the server (password masked) and the setting's source, and
exit code 2. The top-level ``--debug`` flag (``reconcile --debug worker``), or log level
DEBUG, prints the traceback before that line. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import IO, Any, NoReturn, TypeVar

import click

from . import __version__, registry, sets, whereis
from .api import status as get_status
from .broker import get_broker
from .config import Settings, current_settings, get_settings, load_settings, scrub, use_settings
from .embedded import MODES, Mode, servers_for
from .errors import ConfigError, InvalidKey, ReconcileError
from .logs import configure_logging
from .payload import loads_lenient
from .reconciled import ReconciledJob
from .scheduler.passes import run_pass
from .startup import describe
from .worker import Worker, parse_queue

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("reconcile.cli")


def common_options(func: F) -> F:
    options = [
        click.option("--app", "apps", multiple=True, help="Module(s) defining your jobs (repeatable)."),
        click.option("--redis-url", default=None, help="Overrides RECONCILE_REDIS_URL."),
        click.option("--database-url", default=None, help="Overrides RECONCILE_DATABASE_URL."),
        click.option("--namespace", default=None, help="Overrides RECONCILE_NAMESPACE."),
        click.option("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR."),
        click.option("--log-format", default=None, type=click.Choice(["text", "json"]),
                     help="Log lines as text (default) or JSON objects (the setting log_format)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


metrics_port_option = click.option(
    "--metrics-port", type=click.IntRange(0, 65535), default=None,
    help="Serve /metrics, /livez and /readyz on this port (setting metrics_port; 0: off).")


class CliError(click.ClickException):
    """A failure the operator fixes outside the code (a setting, a server, a
    permission): shown as one line ``reconcile: <message>``, exit code 2."""

    exit_code = 2

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"reconcile: {self.format_message()}", err=True, file=file)


def explain(exc: BaseException) -> str | None:
    """The one line for ``exc`` if it is an operator's failure (a ReconcileError, a
    Redis or PostgreSQL failure), with every password of the settings masked; None for
    anything else (a bug: its traceback is kept)."""
    settings = current_settings()
    if isinstance(exc, ReconcileError):
        return scrub(str(exc), settings)
    if settings is None:
        return None
    return describe(exc, settings)


class ReconcileGroup(click.Group):
    """The top-level group: turns the failures :func:`explain` knows into a
    :class:`CliError` for every command below it (subgroups included)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            line = explain(exc)
            if line is None:
                raise
            settings = current_settings()
            if ctx.params.get("debug") or (settings is not None and settings.log_level.upper() == "DEBUG"):
                click.echo(scrub("".join(traceback.format_exception(exc)), settings), err=True)
            raise CliError(line) from exc


def setup(apps: tuple[str, ...], **overrides: Any) -> Settings:
    """Build and install settings, configure logging, import the app modules.
    A bad setting or an app that cannot be imported raises :class:`CliError`."""
    try:
        settings = load_settings(overrides, overrides_source="command line")
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    use_settings(settings)
    configure_logging(settings.log_level, settings.log_format)
    if settings.log_level.upper() != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)  # per-plugin chatter at INFO
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # --app myapp.jobs from the project folder
    # --app, else the setting app (RECONCILE_APP, [tool.reconcile] app)
    _imported_apps.clear()  # one command per process, but tests invoke many
    if apps:
        given, source = apps, "--app"
    else:
        given, source = (settings.app,), f"setting app (from {settings.source_of('app')})"
    for spec in given:
        for module in filter(None, (m.strip() for m in spec.split(","))):
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise CliError(f"{source}: cannot import {module} ({exc})") from None
            _imported_apps.append(module)
    current = get_settings()
    if current is not settings:
        # the app called reconcile.configure() at import: its values apply, but the
        # command line still wins over them
        settings = current.with_overrides(**overrides)
        use_settings(settings)
    return settings


@click.group(cls=ReconcileGroup)
@click.version_option(version=__version__, prog_name="reconcile")
@click.option("--debug", is_flag=True,
              help="Print the traceback of a failure (settings, servers) before its one-line error.")
def main(debug: bool) -> None:
    """reconcile: background jobs on Redis, with PostgreSQL as the truth."""


@main.command()
@common_options
@click.option("-q", "--queue", "queues", multiple=True,
              help="Queue to work, optionally with a weight: -q critical,6 -q default,2.")
@click.option("-c", "--concurrency", type=int, default=None, help="Worker threads (default 10).")
@click.option("--strict", is_flag=True, help="Check queues strictly in the order given.")
@click.option("-t", "--timeout", "shutdown_timeout", type=float, default=None,
              help="Seconds to wait for running jobs on TERM (default 25).")
@click.option("--prefetch", type=int, default=None, help="Jobs leased beyond those running.")
@metrics_port_option
def worker(apps: tuple[str, ...], queues: tuple[str, ...], strict: bool, **flags: Any) -> None:
    """Run jobs from the given queues until TERM/INT."""
    settings = setup(apps, **flags)
    try:
        specs = [parse_queue(q) for q in (queues or ("default",))]
        w = Worker(settings, specs, strict=strict)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    w.run()


@main.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document (see docs/cli.md).")
def status(apps: tuple[str, ...], as_json: bool, **flags: Any) -> None:
    """Queues, sets, in-flight jobs, processes and counters."""
    settings = setup(apps, **flags)
    doc = get_status(settings)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"namespace {doc['namespace']}")
    click.echo(f"{'queue':<24}{'size':>10}{'latency s':>12}")
    def invalid(entry: dict[str, Any]) -> str:  # values Redis holds in a form they cannot have
        bad = entry.get("invalid", {})
        return "".join(f"  INVALID {k}={v}" for k, v in bad.items())

    for q in doc["queues"]:
        click.echo(f"{q['name']:<24}{q['size']:>10}{q['latency']:>12.3f}{invalid(q)}")
    click.echo(
        f"scheduled {doc['scheduled']}  retry {doc['retry']}  dead {doc['dead']}  "
        f"in flight {doc['in_flight']}"
    )
    for p in doc["processes"]:
        state = "quiet" if p["quiet"] else ("alive" if p["alive"] else "dead")
        click.echo(f"process {p['id']} {state} busy {p['busy']}/{p['concurrency']} "
                   f"queues {','.join(p['queues'])}{invalid(p)}")
    for s in doc["schedulers"]:
        ago = s.get("last_beat_ago")
        running = ",".join(s.get("passes_running") or []) or "-"
        click.echo(f"scheduler {s['id']} {'alive' if s['alive'] else 'DEAD'} last beat "
                   f"{'?' if ago is None else f'{ago:.0f}'} s ago, passes running {running}"
                   f"{invalid(s)}")
    if not doc["schedulers_alive"]:
        click.echo("no scheduler alive: reconcile passes, cron jobs and Redis-loss healing "
                   "are stopped (start `reconcile scheduler`)")
    click.echo("counters " + "  ".join(f"{k} {v}" for k, v in doc["counters"].items())
               + invalid({"invalid": doc.get("invalid_counters", {})}))
    _status_classes(doc)


def _status_classes(doc: dict[str, Any]) -> None:
    """``reconcile status``'s per-class lines (``classes`` of the document)."""
    from .web.html import time_text  # deferred: start-up (the web package)

    if doc.get("classes_error"):
        click.echo(f"classes: PostgreSQL could not be read ({doc['classes_error']})")
    for c in doc.get("classes") or []:
        run = c["last_pass"]
        if run is None:
            last = "no pass yet"
        else:
            took = "running" if run["finished_at"] is None else f"{run['duration_ms']} ms"
            last = (f"last pass {time_text(run['started_at'])} ({run['trigger']}, {took}) found "
                    f"{run['found']} enqueued {run['enqueued']} already queued {run['already_queued']} "
                    f"quarantined {run['quarantined']} deferred {run['deferred']}")
            if run["disabled"]:
                last += " (disabled: backlog not enqueued)"
            if run["error"]:
                last += f" ERROR {run['error']}"
        tick = time_text(c["next_tick"]) if c["next_tick"] else "no schedule row"
        switch = "enabled" if c["enabled"] else f"DISABLED ({c['disabled_reason']})"
        click.echo(f"class {c['class']} {switch}, next tick {tick}, quarantined {c['quarantined']}; {last}")


@main.group()
def db() -> None:
    """Framework tables in PostgreSQL (alembic, own version table)."""


def _db_url(flags: dict[str, Any], apps: tuple[str, ...]) -> str:
    return setup(apps, **flags).database_url


@db.command("upgrade")
@common_options
@click.argument("revision", default="head")
def db_upgrade(apps: tuple[str, ...], revision: str, **flags: Any) -> None:
    """Apply migrations up to REVISION (default head)."""
    from .store import migrate  # deferred: start-up (alembic)

    migrate.upgrade(_db_url(flags, apps), revision)
    click.echo(f"reconcile tables at {migrate.current(_db_url(flags, apps))}")


@db.command("downgrade")
@common_options
@click.argument("revision")
def db_downgrade(apps: tuple[str, ...], revision: str, **flags: Any) -> None:
    """Revert migrations down to REVISION (``base`` drops every reconcile table)."""
    from .store import migrate  # deferred: start-up (alembic)

    migrate.downgrade(_db_url(flags, apps), revision)
    click.echo(f"reconcile tables at {migrate.current(_db_url(flags, apps)) or 'base'}")


@db.command("current")
@common_options
def db_current(apps: tuple[str, ...], **flags: Any) -> None:
    """Print the applied revision."""
    from .store import migrate  # deferred: start-up (alembic)

    click.echo(migrate.current(_db_url(flags, apps)) or "base (no reconcile tables)")


def _job_class(name: str, reconciled_only: bool = True) -> Any:
    """The class registered as ``name`` (:func:`reconcile.registry.find`); a usage error
    naming the known classes if none or several match."""
    try:
        if reconciled_only:
            return registry.find(name, ReconciledJob, "ReconciledJob")
        return registry.find(name)
    except LookupError as exc:
        hint = "" if _imported_apps else (
            " (no app module was imported: give --app MODULE, or set app in "
            "[tool.reconcile] or RECONCILE_APP)")
        raise click.UsageError(f"{exc}{hint}") from None


def _reconciled_class(name: str) -> Any:
    return _job_class(name, reconciled_only=True)


_imported_apps: list[str] = []
"""The app modules :func:`setup` imported (from ``--app`` or the setting ``app``)."""


def _job_name(name: str | None, settings: Settings) -> str | None:
    """A job class name given to a command (``--job``, ``--class``, ``JOB``), as its full
    registry name; never taken on trust, so that a typo cannot silently match nothing.

    With app modules imported, the full name or the unique class name of a registered
    class (else a usage error, exit 2, with the close matches). Without, only a full
    name PostgreSQL knows (a schedule row or a kill switch); anything else is refused,
    asking for ``--app``."""
    if name is None:
        return None
    if _imported_apps:
        return str(_job_class(name, reconciled_only=False).job_name)
    from . import control  # deferred: start-up (PostgreSQL driver)

    known = control.known_job_names(settings)
    if name in known:
        return name
    raise click.UsageError(
        f"{name!r}: no app module was given to check this job class name against (give "
        f"--app MODULE, or set app in [tool.reconcile] or RECONCILE_APP); PostgreSQL knows "
        f"no job of that name, {registry.close_matches(name, known)}")


@main.command()
@common_options
@metrics_port_option
def scheduler(apps: tuple[str, ...], **flags: Any) -> None:
    """Fire reconcile passes and cron ticks; heal Redis loss. Run as many as you like."""
    from .scheduler.service import Scheduler  # deferred: start-up

    Scheduler(setup(apps, **flags)).run()


@main.command()
@common_options
@click.option("--url", default=None, metavar="http://HOST:PORT",
              help="The metrics server of the process (default: 127.0.0.1 on metrics_port).")
@click.option("--process", "process_id", default=None, metavar="ID",
              help="Or: the worker or scheduler id as `reconcile status` lists it (Redis registry).")
@click.option("--live", "probe", flag_value="live", help="Liveness: restart the process if it fails.")
@click.option("--ready", "probe", flag_value="ready", default=True, help="Readiness (the default).")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds to wait for the answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the process's health document.")
def health(apps: tuple[str, ...], url: str | None, process_id: str | None, probe: str, timeout: float,
           as_json: bool, **flags: Any) -> None:
    """Exit 0 if a worker or scheduler is live (--live) or ready (the default), else 1."""
    from .observe import probe as probes  # deferred: start-up (urllib.request, http.client)

    settings = setup(apps, **flags)
    if url and process_id:
        raise click.UsageError("give --url or --process, not both")
    if process_id:
        try:
            verdict = probes.by_process(get_status(settings), process_id, probe)
        except Exception as exc:  # Redis down: the process cannot be judged healthy
            verdict = probes.Verdict(False, f"cannot read the Redis registry ({explain(exc) or exc})")
    else:
        if not url:
            if not settings.metrics_port:
                raise click.UsageError("give --url http://host:port or --process ID (or set "
                                       "metrics_port: then 127.0.0.1 on it is asked)")
            url = f"http://127.0.0.1:{settings.metrics_port}"
        why = probes.url_problem(url)
        if why:
            raise click.UsageError(f"--url {url!r} {why}")
        verdict = probes.by_url(url, probe, timeout)
    click.echo(json.dumps(verdict.body) if as_json else verdict.summary)
    sys.exit(0 if verdict.ok else 1)


@main.command("run")
@common_options
@click.argument("job")
def run_cmd(apps: tuple[str, ...], job: str, **flags: Any) -> None:
    """Run one reconcile pass of JOB now and print its counts."""
    settings = setup(apps, **flags)
    _quiet_pass_log()
    result = run_pass(_reconciled_class(job), trigger="manual", settings=settings)
    click.echo(result.summary())
    if result.error:
        sys.exit(1)


class _NoPassSummary(logging.Filter):
    """Drops the INFO line ``pass <summary>`` that ``run_pass`` logs (and nothing else)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.msg == "pass %s")


def _quiet_pass_log() -> None:
    """``run`` and ``flush`` print each pass's summary on stdout: its INFO log line
    would say it a second time on stderr. The scheduler's other lines, and the passes'
    warnings and errors, are still logged."""
    logger = logging.getLogger("reconcile.scheduler")
    if not any(isinstance(f, _NoPassSummary) for f in logger.filters):
        logger.addFilter(_NoPassSummary())


@main.command()
@common_options
@click.option("--yes", is_flag=True, help="Confirm: delete every Redis key of the namespace.")
def flush(apps: tuple[str, ...], yes: bool, **flags: Any) -> None:
    """Incident tool: drop the namespace's Redis data, then re-derive all work at once.

    Plain Jobs in Redis are lost; ReconciledJob work is re-enqueued by passes run
    here (and by any running scheduler, which detects the flush).
    """
    settings = setup(apps, **flags)
    if not yes:
        raise click.UsageError("flush deletes every key of the namespace: pass --yes")
    _quiet_pass_log()
    from . import control  # deferred: start-up (PostgreSQL driver)

    done = control.flush(settings)
    click.echo(f"deleted {done.deleted} Redis keys of namespace {settings.namespace!r}")
    for r in done.results:
        click.echo("pass " + r.summary())
    if done.elsewhere > 0:
        click.echo(f"{done.elsewhere} passes were already running elsewhere; they were made due now")


@main.group()
def quarantine() -> None:
    """Keys of ReconciledJobs that died; passes skip them until released."""


@quarantine.command("list")
@common_options
@click.option("--job", default=None, help="Only this job class.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per key.")
def quarantine_list(apps: tuple[str, ...], job: str | None, as_json: bool, **flags: Any) -> None:
    """List quarantined keys with their last error."""
    from .store import quarantine as q  # deferred: start-up
    from .store.engine import get_engine  # deferred: start-up

    settings = setup(apps, **flags)
    entries = q.list_entries(get_engine(settings), _job_name(job, settings))
    dead = _dead_records(settings, [(e.payload or {}).get("jid") for e in entries])
    for e in entries:
        if as_json:
            click.echo(json.dumps({
                "job": e.job, "key": list(e.key), "reason": e.reason, "error_class": e.error_class,
                "error_message": e.error_message, "quarantined_at": e.quarantined_at.isoformat(),
                "jid": (e.payload or {}).get("jid"),
                "dead_record": dead.get(str((e.payload or {}).get("jid"))),
            }))
            continue
        jid = str((e.payload or {}).get("jid"))
        record = f" dead record {jid}" if dead.get(jid) else " (no dead record)"
        click.echo(f"{e.job} {json.dumps(list(e.key))} {e.quarantined_at:%Y-%m-%d %H:%M:%S} "
                   f"{e.error_class}: {e.error_message}{record}")
    if not as_json:
        click.echo(f"{len(entries)} quarantined")


def _dead_records(settings: Settings, jids: list[Any]) -> dict[str, bool]:
    """For each jid (of a quarantine entry's last delivery), whether its dead record is
    still in the dead set: one bounded lookup each (``Broker.locate``)."""
    broker = get_broker(settings)
    return {j: broker.locate(j).state == "dead" for j in jids if isinstance(j, str) and j}


@quarantine.command("release")
@common_options
@click.argument("keys", nargs=-1)
@click.option("--job", default=None, help="Job class of KEYS (required unless --all).")
@click.option("--all", "release_all", is_flag=True, help="Release every key (of --job, if given).")
def quarantine_release(
    apps: tuple[str, ...], keys: tuple[str, ...], job: str | None, release_all: bool, **flags: Any
) -> None:
    """Release KEYS (JSON arrays or scalars: 42, '[7,"eu"]') so passes enqueue them again."""
    from . import control  # deferred: start-up (PostgreSQL driver)

    settings = setup(apps, **flags)
    job = _job_name(job, settings)
    if release_all:
        n = control.release_all_quarantined(settings, job)
    else:
        if not job or not keys:
            raise click.UsageError("give --job and KEYS, or --all")
        # with --app, "42" and 42 name one row: the key's canonical form is released too
        cls = _reconciled_class(job) if _imported_apps else None
        try:
            n = control.release_quarantined(settings, job, [control.parse_key(k) for k in keys], cls)
        except InvalidKey as exc:
            raise click.UsageError(str(exc)) from None
    click.echo(f"released {n} keys")


@main.command("job")
@common_options
@click.argument("jid")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document (see docs/cli.md).")
def job_cmd(apps: tuple[str, ...], jid: str, as_json: bool, **flags: Any) -> None:
    """Where job JID is: queued (queue, position), scheduled, retrying, dead, running, or unknown."""
    settings = setup(apps, **flags)
    try:
        doc = whereis.job(jid, settings)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    for line in whereis.job_lines(doc):
        click.echo(line)


@main.command("key")
@common_options
@click.argument("job")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document (see docs/cli.md).")
def key_cmd(apps: tuple[str, ...], job: str, key: str, as_json: bool, **flags: Any) -> None:
    """Why KEY of ReconciledJob JOB is or is not done (KEY: 42, or '[7,"eu"]' for several columns)."""
    from . import control  # deferred: start-up (PostgreSQL driver)

    settings = setup(apps, **flags)
    cls = _reconciled_class(job)
    try:
        doc = whereis.key_status(cls, control.parse_key(key), settings)
    except InvalidKey as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    for line in whereis.key_lines(doc):
        click.echo(line)


SET_GROUPS = (
    # (command group, set, group help, the action moving a job to its queue, its help)
    ("dead", "dead", "Jobs in the dead set: list them, retry them, delete them.", "retry",
     "Move dead jobs back to their queues for one more attempt (see docs/jobs.md)."),
    ("scheduled", "scheduled", "Jobs scheduled for later: list them, run them now, delete them.",
     "run", "Move scheduled jobs to the back of their queues now."),
    ("retries", "retry", "Jobs waiting for a retry: list them, run them now, delete them.",
     "run", "Move jobs waiting for a retry to the back of their queues now (count kept)."),
)


def _set_list(which: str, apps: tuple[str, ...], limit: int, as_json: bool,
              flags: dict[str, Any]) -> None:
    from .web.html import time_text  # deferred: start-up (the web package)

    settings = setup(apps, **flags)
    broker = get_broker(settings)
    rows = broker.set_entries(which, 0, limit - 1)
    for raw, score in rows:
        job = loads_lenient(raw)
        if as_json:
            click.echo(json.dumps(job))
            continue
        # a crafted score (1e308, inf) is printed as it is; --score takes it back exactly
        when = time_text(score) or f"INVALID time {score!r}"
        when = f"{when} score={score!r}"
        args = json.dumps(job.get("args"))
        args = args if len(args) <= 60 else args[:57] + "..."
        error = f" {job.get('error_class')}: {str(job.get('error_message'))[:200]}" if (
            "error_class" in job) else ""
        click.echo(f"{job.get('jid') or '-'} {job.get('class')} {args} {when}{error}")
    if not as_json:
        click.echo(f"{len(rows)} shown, {broker.set_sizes()[which]} {which}")


def _set_show(which: str, jid: str, apps: tuple[str, ...], as_json: bool,
               flags: dict[str, Any]) -> None:
    from .web.html import time_text  # deferred: start-up (the web package)

    settings = setup(apps, **flags)
    entry = sets.find(which, jid, settings)
    if entry is None:
        raise CliError(f"no job {jid!r} in the {which} set")
    job = entry.payload or {}
    if as_json:
        if which == "dead":
            job = {**job, **_link_doc(settings, job)}
        click.echo(json.dumps(job))
        return
    click.echo(f"jid {job.get('jid')}  class {job.get('class')}  queue {job.get('queue')}")
    click.echo(f"args {json.dumps(job.get('args'))}")
    click.echo(f"{'died' if which == 'dead' else 'runs'} {time_text(entry.score) or entry.score!r}"
               + (f"  retries so far {job['retry_count']}" if "retry_count" in job else ""))
    if "error_class" in job:
        click.echo(f"error {job.get('error_class')}: {job.get('error_message')}")
    trace = job.get("error_backtrace")
    if trace:
        click.echo(str(trace).rstrip("\n"))
    elif "error_class" in job:
        click.echo("(no traceback kept: the class's backtrace option is off, or the record "
                   "predates it)")
    if which == "dead":
        _quarantine_link(settings, job)


def _link_doc(settings: Settings, job: dict[str, Any]) -> dict[str, Any]:
    """``{"quarantine": ..., "resolved": ...}`` for a ReconciledJob's dead record, else {}."""
    cls = registry.all_classes().get(str(job.get("class")))
    if cls is None or not issubclass(cls, ReconciledJob) or not isinstance(job.get("args"), list):
        return {}
    return whereis.dead_link(settings, cls, job["args"])


def _quarantine_link(settings: Settings, job: dict[str, Any]) -> None:
    """``dead show``'s line linking a ReconciledJob's dead record to its key's
    quarantine entry (or saying it was released, and whether the key is done since)."""
    cls = registry.all_classes().get(str(job.get("class")))
    if cls is None or not issubclass(cls, ReconciledJob) or not isinstance(job.get("args"), list):
        return
    link = whereis.dead_link(settings, cls, job["args"])
    click.echo("quarantine: " + whereis.link_line(link))


def _set_change(which: str, action: str, apps: tuple[str, ...], jids: tuple[str, ...],
                job: str | None, every: bool, score: float | None, flags: dict[str, Any]) -> None:
    settings = setup(apps, **flags)
    if bool(jids) == every:
        raise click.UsageError("give JIDs, or --all (with --class to choose one job class)")
    if score is not None and len(jids) != 1:
        raise click.UsageError("--score goes with exactly one JID (the score= that list prints)")
    done, change = sets.act(which, "delete" if action == "delete" else "move",
                            list(jids) if jids else None, job=_job_name(job, settings), settings=settings,
                            scores={jids[0]: score} if score is not None else None)
    click.echo(f"{done} {change.changed} jobs")
    for jid in change.not_found:
        click.echo(f"not in the {which} set: {jid}")
    for what, why in change.not_retryable:
        click.echo(f"not moved: {what!r}: {why}")


def _set_action(group: click.Group, which: str, action: str, help_text: str) -> None:
    @group.command(action, help=help_text)
    @common_options
    @click.argument("jids", nargs=-1)
    @click.option("--all", "every", is_flag=True, help="Every job of the set (of --class, if given).")
    @click.option("--class", "job", default=None, help="Only jobs of this class (registry name).")
    @click.option("--score", type=float, default=None,
                  help="The JID's score (as `list` prints it): read only the members at it.")
    def command(apps: tuple[str, ...], jids: tuple[str, ...], every: bool, job: str | None,
                score: float | None, **flags: Any) -> None:
        _set_change(which, action, apps, jids, job, every, score, flags)


def _set_group(name: str, which: str, help_text: str, move: str, move_help: str) -> None:
    """``reconcile <name> list | <move> | delete`` for one of the sets."""
    group = click.Group(name, help=help_text)

    @group.command("list", help=f"List the {'newest' if which == 'dead' else 'next'} jobs of the set.")
    @common_options
    @click.option("--limit", default=20, show_default=True, help="How many.")
    @click.option("--json", "as_json", is_flag=True, help="Print the payloads as JSON, one per line.")
    def list_command(apps: tuple[str, ...], limit: int, as_json: bool, **flags: Any) -> None:
        _set_list(which, apps, limit, as_json, flags)

    @group.command("show", help="One job of the set by its jid, with its error and traceback.")
    @common_options
    @click.argument("jid")
    @click.option("--json", "as_json", is_flag=True, help="Print the payload as JSON.")
    def show_command(apps: tuple[str, ...], jid: str, as_json: bool, **flags: Any) -> None:
        _set_show(which, jid, apps, as_json, flags)

    _set_action(group, which, move, move_help)
    _set_action(group, which, "delete",
                "Delete jobs" + ("." if which == "dead" else ", releasing their uniqueness locks."))
    main.add_command(group)


for _group in SET_GROUPS:
    _set_group(*_group)


@main.command()
@common_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8181, show_default=True, type=int, help="Port to listen on.")
@click.option("--read-only", is_flag=True, help="Show everything, change nothing.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Host name browsers use to reach it, besides localhost and the bound "
                   "address (repeatable; '*' for any, when a proxy checks it).")
@click.option("--basic-auth", envvar="RECONCILE_WEB_BASIC_AUTH", default=None, metavar="USER:PASSWORD",
              help="Require this login (HTTP basic; prefer RECONCILE_WEB_BASIC_AUTH, which "
                   "keeps the secret off the command line).")
@click.option("--insecure", is_flag=True,
              help="Serve a non-loopback --host without a login (an authenticating proxy in front).")
@click.option("--read-timeout", type=float, default=None,
              help="Seconds a request may take to arrive (default 10).")
def web(apps: tuple[str, ...], host: str, port: int, read_only: bool, allowed_hosts: tuple[str, ...],
        basic_auth: str | None, insecure: bool, read_timeout: float | None, **flags: Any) -> None:
    """Serve the dashboard (see docs/web.md, Security)."""
    from .web.app import READ_TIMEOUT, BasicAuth, is_loopback, serve  # deferred: start-up

    def refuse(message: str) -> NoReturn:
        click.echo(f"error: {message}", err=True)
        sys.exit(2)

    auth = None
    if basic_auth is not None:
        try:
            auth = BasicAuth.parse(basic_auth)
        except ValueError as exc:
            refuse(f"--basic-auth / RECONCILE_WEB_BASIC_AUTH: {exc}")
    if not is_loopback(host) and auth is None and not insecure:
        refuse(f"--host {host} is not a loopback address and the dashboard has no login: pass "
               "--basic-auth USER:PASSWORD (or set RECONCILE_WEB_BASIC_AUTH), or --insecure "
               "if a proxy in front authenticates")
    if read_timeout is not None and not read_timeout > 0:
        refuse(f"--read-timeout must be a positive number of seconds, not {read_timeout:g}")
    settings = setup(apps, **flags)
    try:
        server = serve(settings, host, port, read_only, allowed_hosts=allowed_hosts, auth=auth,
                       read_timeout=read_timeout or READ_TIMEOUT)
    except OSError as exc:
        refuse(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"reconcile dashboard on http://{shown}:{server.server_port}/ "
               f"(namespace {settings.namespace}{', read-only' if read_only else ''}"
               f"{', basic auth' if auth else ''}); Ctrl-C stops it")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _switch(apps: tuple[str, ...], job: str, enabled: bool, reason: str, flags: dict[str, Any]) -> None:
    from . import control  # deferred: start-up (PostgreSQL driver)

    settings = setup(apps, **flags)
    name = _job_name(job, settings)
    assert name is not None
    done = control.set_switch(settings, name, enabled, reason, control.operator())
    if done.mirror_error is not None:
        click.echo(f"warning: Redis mirror not updated ({done.mirror_error}); a scheduler will update it",
                   err=True)
    click.echo(f"{name} {'enabled' if enabled else 'disabled'}")


@main.command()
@common_options
@click.argument("job")
@click.option("--reason", required=True, help="Why (recorded in reconcile_switches).")
def disable(apps: tuple[str, ...], job: str, reason: str, **flags: Any) -> None:
    """Kill switch for JOB (durable, in PostgreSQL).

    A ReconciledJob's enqueues are rejected, its passes skip it and its queued jobs are
    dropped (the next pass after enabling re-derives them). A plain Job still enqueues,
    but workers hold its jobs (re-scheduled every 30 s) until it is enabled."""
    _switch(apps, job, False, reason, flags)


@main.command()
@common_options
@click.argument("job")
@click.option("--reason", default="", help="Why (recorded in reconcile_switches).")
def enable(apps: tuple[str, ...], job: str, reason: str, **flags: Any) -> None:
    """Re-enable JOB: held plain jobs run again, a ReconciledJob's next pass re-derives
    what was dropped."""
    _switch(apps, job, True, reason, flags)


@main.group("switches")
def switches_group() -> None:
    """Kill switches: which job classes are disabled, why, since when, by whom."""


@switches_group.command("list")
@common_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per switch.")
def switches_list(apps: tuple[str, ...], as_json: bool, **flags: Any) -> None:
    """Every job class with a switch row (a class never switched is enabled)."""
    from .store import switches  # deferred: start-up
    from .store.engine import get_engine  # deferred: start-up

    settings = setup(apps, **flags)
    rows = sorted(switches.all_switches(get_engine(settings)).values(), key=lambda s: s.job)
    for s in rows:
        if as_json:
            click.echo(json.dumps({
                "job": s.job, "enabled": s.enabled, "reason": s.reason,
                "since": s.changed_at.isoformat(), "by": s.changed_by,
                "last_disabled_reason": s.last_disabled_reason,
                "last_disabled_at": s.last_disabled_at.isoformat() if s.last_disabled_at else None,
            }))
            continue
        line = (f"{s.job} {'enabled' if s.enabled else 'DISABLED'} since "
                f"{s.changed_at:%Y-%m-%d %H:%M:%S}" + (f" by {s.changed_by}" if s.changed_by else "")
                + (f": {s.reason}" if s.reason else ""))
        if s.enabled and s.last_disabled_at is not None:
            line += (f" (last disabled {s.last_disabled_at:%Y-%m-%d %H:%M:%S}"
                     + (f": {s.last_disabled_reason}" if s.last_disabled_reason else "") + ")")
        click.echo(line)
    if not as_json:
        click.echo(f"{sum(not s.enabled for s in rows)} disabled, {len(rows)} with a switch")


@main.group("schedules")
def schedules_group() -> None:
    """The schedule rows schedulers share: reconcile passes and cron enqueues."""


@schedules_group.command("list")
@common_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per schedule.")
def schedules_list(apps: tuple[str, ...], as_json: bool, **flags: Any) -> None:
    """Every schedule: its kind and spec, next run, and the pass running now, if any."""
    from .store import schedules  # deferred: start-up
    from .store.engine import get_engine  # deferred: start-up

    settings = setup(apps, **flags)
    rows = schedules.list_schedules(get_engine(settings))

    def iso(t: Any) -> str | None:
        return t.isoformat() if t is not None else None

    for s in rows:
        if as_json:
            click.echo(json.dumps({
                "name": s.name, "kind": s.kind, "spec": s.spec, "next_run_at": iso(s.next_run_at),
                "running_owner": s.running_owner, "running_since": iso(s.running_since),
                "last_started_at": iso(s.last_started_at), "last_finished_at": iso(s.last_finished_at),
                "updated_at": iso(s.updated_at), "bounds_gen": s.bounds_gen,
                "bounds": s.bounds, "scanned_gen": s.scanned_gen, "scanned_keys": s.scanned_keys,
            }))
            continue
        running = f", running on {s.running_owner} since {s.running_since:%H:%M:%S}" if (
            s.running_owner and s.running_since) else ""
        # a partition's row: the bounds generation its last pass scanned, and its keys
        scanned = f", scanned {s.scanned_keys} keys of bounds gen {s.scanned_gen}" if (
            s.scanned_gen is not None) else ""
        click.echo(f"{s.name} {s.kind} {s.spec}: next {s.next_run_at:%Y-%m-%d %H:%M:%S}"
                   f"{running}{scanned}")
    if not as_json:
        click.echo(f"{len(rows)} schedules")


@schedules_group.command("fire")
@common_options
@click.argument("job")
def schedules_fire(apps: tuple[str, ...], job: str, **flags: Any) -> None:
    """Make JOB's schedule due now: the next scheduler tick runs its pass (a
    ReconciledJob) or its cron enqueue (a plain job), once, cluster-wide."""
    from . import control  # deferred: start-up (PostgreSQL driver)

    settings = setup(apps, **flags)
    name = _job_name(job, settings)
    assert name is not None
    if not control.fire_schedule(settings, name):
        raise CliError(f"{name} has no schedule row (not a ReconciledJob or cron job a "
                       "scheduler has run)")
    click.echo(f"{name} due now: a running scheduler fires it within a tick (1 s)")


@main.command()
@common_options
@click.option("--job", default=None, help="Only this job class.")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per pass.")
def runs(apps: tuple[str, ...], job: str | None, limit: int, as_json: bool, **flags: Any) -> None:
    """Recent reconcile passes and their counts."""
    from .store import runs as store_runs  # deferred: start-up
    from .store.engine import get_engine  # deferred: start-up

    settings = setup(apps, **flags)
    for r in store_runs.recent_runs(get_engine(settings), job=_job_name(job, settings), limit=limit):
        if as_json:
            click.echo(json.dumps(dataclasses.asdict(r), default=lambda t: t.isoformat()))
            continue
        click.echo(
            f"{r.started_at:%Y-%m-%d %H:%M:%S} {r.name} {r.trigger}: found {r.found} enqueued "
            f"{r.enqueued} already {r.already_queued} quarantined {r.quarantined} "
            + (f"deferred {r.deferred} " if r.deferred else "")
            + (f"replica lag {r.replica_lag_ms} ms " if r.replica_lag_ms is not None else "")
            + f"{r.duration_ms} ms" + (" DISABLED" if r.disabled else "")
            + (f" ERROR {r.error}" if r.error else "")
        )


EMBEDDED_OPTION = click.option(
    "--embedded", type=click.Choice(MODES), default="auto", show_default=True,
    help="Private Redis/PostgreSQL (the 'embedded' extra): auto = for each server that does "
         "not answer; always; never.")


def _say(message: str) -> None:
    click.echo(f"reconcile: {message}", err=True)


@main.command()
@common_options
@click.option("--orders", default=3000, show_default=True, help="Orders to seed.")
@click.option("--invoices", default=1000, show_default=True, help="Invoices to seed.")
@EMBEDDED_OPTION
def demo(apps: tuple[str, ...], orders: int, invoices: int, embedded: Mode, **flags: Any) -> None:
    """Run the example shop end to end, flushing Redis in the middle."""
    # imported here: importing the shop registers its job classes, which no other
    # command should see
    from .examples.shop.demo import run_demo

    settings = setup(apps, **flags)
    with servers_for(settings, embedded, _say) as served:
        use_settings(served)
        code = run_demo(served, orders, invoices)
    sys.exit(code)


@main.command()
@common_options
@click.option("-q", "--queue", "queues", multiple=True,
              help="Queue[,weight] for the worker, repeatable (default: every queue of the app).")
@click.option("-c", "--concurrency", type=int, default=None, help="Worker threads (default 10).")
@EMBEDDED_OPTION
def dev(apps: tuple[str, ...], queues: tuple[str, ...], concurrency: int | None, embedded: Mode,
        **flags: Any) -> None:
    """Scheduler, one worker and, when needed, private servers: local development. Ctrl-C stops."""
    from .dev import run_dev  # here, like the other commands' modules: alembic loads only for it

    settings = setup(apps, **flags)
    if not _imported_apps:
        raise click.UsageError("reconcile dev needs --app, or the setting app (the module(s) "
                               "defining your jobs)")
    sys.exit(run_dev(settings, tuple(_imported_apps), queues, concurrency, embedded, _say))


def run() -> None:
    """Entry point. Failures inside a command are turned into one line by
    :class:`ReconcileGroup`; this catches what escapes it (none expected)."""
    try:
        main(standalone_mode=True)
    except ReconcileError as exc:
        click.echo(f"reconcile: {scrub(str(exc), current_settings())}", err=True)
        sys.exit(2)
