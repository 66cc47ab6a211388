"""HTML building blocks of the dashboard: every value is escaped unless wrapped in
:class:`Raw`, so a job argument can never inject markup. Pages carry no inline event
handler or style attribute: their one ``<style>`` and one ``<script>`` are tagged with
the response's nonce, which its Content-Security-Policy names (see ``app.csp``)."""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

MAX_CELL = 200
"""Characters of a job's arguments or error shown in a table cell."""


class Raw(str):
    """Markup built here, inserted as is."""

    __slots__ = ()


def e(value: Any) -> Raw:
    """``value`` as escaped text (already-built markup passes through)."""
    if isinstance(value, Raw):
        return value
    return Raw(html.escape("" if value is None else str(value), quote=True))


def clip(value: Any, limit: int = MAX_CELL) -> str:
    """A value as short text for a cell: JSON for lists and dicts, cut at ``limit``."""
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def when(ts: Any) -> Raw:
    """An epoch time as UTC, with how long ago (or from now) it is; ``-`` for None. A
    value that is not a time a calendar can show (text, NaN, 1e308, a negative epoch)
    is shown as it is, marked invalid."""
    if ts is None:
        return e("-")
    stamp = time_text(ts)
    if stamp is None:
        return bad(ts, "not a valid time")
    delta = time.time() - ts
    rel = f"{_span(abs(delta))} {'ago' if delta >= 0 else 'from now'}"
    return Raw(f'<span title="{stamp} UTC">{e(rel)}</span>')


def time_text(ts: Any) -> str | None:
    """``YYYY-mm-dd HH:MM:SS`` (UTC) of an epoch time, or None when ``ts`` is not one
    (not a number, not finite, before 1970 or past year 9999)."""
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts) or ts < 0:
        return None
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return None


def bad(value: Any, why: str) -> Raw:
    """A value that should not be there, shown raw (``repr``, escaped and cut) and marked."""
    return Raw(f'<span class="bad" title="{e(why)}">invalid: {e(clip(repr(value)))}</span>')


def _span(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], empty: str = "none") -> Raw:
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="empty">{e(empty)}</td></tr>'
    return Raw(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def form(action: str, label: str, fields: dict[str, str] | None = None, confirm: str = "") -> Raw:
    """A POST button; ``fields`` become hidden inputs."""
    hidden = "".join(f'<input type="hidden" name="{e(k)}" value="{e(v)}">'
                     for k, v in (fields or {}).items())
    check = f' data-confirm="{e(confirm)}"' if confirm else ""  # asked by the page's SCRIPT
    return Raw(f'<form method="post" action="{e(action)}"{check}>{hidden}'
               f'<button type="submit">{e(label)}</button></form>')


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
header{background:#2b3a4a;color:#fff;padding:8px 16px}header a{color:#fff;margin-right:14px}
main{padding:12px 16px}table{border-collapse:collapse;margin:8px 0 18px}
th,td{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}
td.empty{color:#888}form{display:inline;margin:0 4px 0 0}.msg{background:#eef6e8;padding:6px 10px}
.err{background:#fbeaea;padding:6px 10px}code{font-size:13px}.ns{float:right}
.bad{color:#a00;font-family:monospace}
"""

SCRIPT = (
    'document.addEventListener("submit",function(ev){'
    'var q=ev.target.getAttribute("data-confirm");if(q&&!confirm(q))ev.preventDefault();});'
)
"""The page's one script: the confirmation of the buttons acting on a whole set."""


def layout(title: str, body: str, nav: Sequence[tuple[str, str]], namespace: str,
           refresh: int = 0, message: str = "", error: str = "", nonce: str = "") -> bytes:
    """The whole page; ``nonce`` tags its style and script (the response's CSP names it)."""
    links = "".join(f'<a href="{e(href)}">{e(label)}</a>' for label, href in nav)
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh > 0 else ""
    notes = (f'<p class="msg">{e(message)}</p>' if message else "") + (
        f'<p class="err">{e(error)}</p>' if error else "")
    return (
        f'<!doctype html><html><head><meta charset="utf-8">{meta}<title>{e(title)} - reconcile'
        f'</title><style nonce="{e(nonce)}">{STYLE}</style>'
        f'<script nonce="{e(nonce)}">{SCRIPT}</script></head><body><header>{links}'
        f'<span class="ns">namespace {e(namespace)}</span></header>'
        f"<main><h2>{e(title)}</h2>{notes}{body}</main></body></html>"
    ).encode()
