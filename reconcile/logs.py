"""Log hygiene: text that comes from jobs is escaped before it is logged.

Exception messages, class names and jids read from payloads, and arguments are
written by applications (or by whoever can push to Redis). Logged as they are, a
``"\\nERROR forged"`` in an exception message starts a line that looks like a record
of its own, and an ANSI escape rewrites the operator's terminal. :func:`safe` is the
one escaping every log call of the engine applies to such text (the worker, the
executor, the retry code, ``reconciled.py``, the scheduler's poller).

Contract: ``safe(x)`` is ``str(x)`` with every control character (C0, DEL, C1), the
Unicode line and paragraph separators and lone surrogates replaced by a
backslash escape as ``repr`` writes it (``\\n``, ``\\x1b``, ``\\u2028``,
``\\ud800``); backslashes are kept as they are. Text without such characters is
returned unchanged, at the cost of one regular-expression scan.

Structured logs: :func:`configure_logging` installs the text or the JSON format
(:class:`JsonFormatter`, the setting ``log_format``) for every record of the process;
:data:`job_context` carries the running job's fields into every record made while it
runs.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: object) -> str:
    """``str(text)`` with control characters escaped (see the module docs)."""
    try:
        s = text if type(text) is str else str(text)
    except Exception as exc:  # a __str__ that raises must not break the log call
        s = f"<unprintable {type(text).__name__}: {type(exc).__name__}>"
    if _UNSAFE.search(s) is None:
        return s
    return _UNSAFE.sub(_escape, s)


# -- structured logs ---------------------------------------------------------------------

job_context: ContextVar[tuple[str, dict[str, Any], bool] | None] = ContextVar("reconcile_job", default=None)
"""The job an executor thread is running, as (queue, payload, keyed), set by the
executor around ``perform`` and the server middleware: every log call made meanwhile
on that thread, the application's own included, carries its fields in the JSON format
(:func:`job_fields`). A reference, not the fields: the per-job cost is one
``ContextVar.set`` and ``reset``; the fields are built only for records written."""


def job_fields(ctx: tuple[str, dict[str, Any], bool]) -> dict[str, Any]:
    """``jid``, ``class``, ``queue``, ``attempt`` (1 for the first run, 2 for the first
    retry...) and, for a ReconciledJob, ``key`` (its arguments) of a running job."""
    queue, payload, keyed = ctx
    fields: dict[str, Any] = {"jid": payload.get("jid"), "class": payload.get("class"), "queue": queue,
                              "attempt": int(payload["retry_count"]) + 2 if "retry_count" in payload else 1}
    if keyed:
        fields["key"] = payload.get("args")
    return fields

JOB_FIELDS = ("jid", "class", "queue", "key", "attempt", "outcome", "duration_ms")
"""The job fields a JSON line carries when they are known: from :data:`job_context`,
or given as ``extra={...}`` to a log call (``outcome``, ``duration_ms``)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``ts`` (UTC, ISO 8601 with
    milliseconds), ``level``, ``logger``, ``msg``, ``pid``, ``thread``, the
    :data:`JOB_FIELDS` that are known, and ``exc`` (the formatted traceback) when the
    record has one. Messages are written as they are (JSON escapes control
    characters, so a forged line break cannot start a record)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
            "thread": record.threadName,
        }
        ctx = job_context.get()
        known = job_fields(ctx) if ctx is not None else {}
        for name in JOB_FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = known.get(name)
            if value is not None:
                line[name] = value
        banner = getattr(record, "banner", None)
        if isinstance(banner, dict):
            # the start-up banner (reconcile.banner): its facts as one object, and a
            # one-line msg instead of the text block
            line["banner"] = banner
            line["msg"] = f"reconcile {banner.get('role')} {banner.get('process')} starting"
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(process)d: %(message)s"
"""The text format of ``reconcile`` commands (``log_format = "text"``)."""


def configure_logging(level: str, fmt: str = "text") -> None:
    """Send the process's log records to stderr at ``level``, as text lines or JSON
    objects (``fmt``: the setting ``log_format``), through one handler on the root
    logger, so that every line the process writes, the application's included, has the
    one format. Called again, it replaces its own handler and leaves others alone (a
    test runner's capture, an error tracker's)."""
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _OURS, False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


_OURS = "_reconcile_handler"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted (as logging's own
    last-resort handler does), not to the stream of the moment it was made: a command
    run inside a test runner that swaps ``sys.stderr`` must not leave a handler on a
    closed stream behind."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always sys.stderr
