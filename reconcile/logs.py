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
"""

from __future__ import annotations

import re

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
