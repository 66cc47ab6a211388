"""A griffe extension: reconcile's reST-ish docstrings rendered as Markdown.

The docstrings are written for readers of the source first, in the Sphinx manner:
``double backticks`` for code (already valid Markdown), ``:class:`~reconcile.Job```
roles for cross-references, and ``Title::`` before an indented literal block.
mkdocstrings renders docstrings as Markdown, which knows neither roles nor ``::``, so
this extension rewrites them while griffe loads the package, before any page is
rendered:

* a role (``:class:``, ``:func:``, ``:meth:``, ``:mod:``, ``:data:``, ``:attr:``,
  ``:exc:``) becomes an *optional* autorefs cross-reference: a link when the target is
  on a reference page, plain code when it is not (a private module, say). So a
  docstring can name any object without breaking ``mkdocs build --strict``. A name
  that is not dotted from ``reconcile`` (``Settings.source_of``) is resolved in the
  scope of the object whose docstring it is, as Python would; ``~`` shows only the
  last component, as in Sphinx; ``!`` keeps the text and drops the link;
* ``Title::`` at the end of a line becomes ``Title:``, and the indented literal block
  after it a fenced Python code block. An indented block is already code in Markdown,
  but not inside a list item, where Python-Markdown wants four spaces of indent for
  the item and four more for the code, not the two and four a reST list uses.

The source files are not changed; only the text mkdocstrings sees. Loaded by
``mkdocs.yml`` (``plugins: mkdocstrings: handlers: python: options: extensions``).
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj):`(?P<target>[^`]+)`")
BULLET = re.compile(r"\s*(?:[*+-]|\d+[.)])\s")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _in_list_item(lines: list[str], i: int) -> bool:
    """Whether line ``i`` belongs to a paragraph that starts with a list bullet."""
    while i > 0 and lines[i - 1].strip():
        i -= 1
    return BULLET.match(lines[i]) is not None


def literal_blocks(text: str) -> str:
    """``text`` with each reST ``Title::`` + indented block as ``Title:`` + a fence."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not (line.rstrip().endswith("::") and line.strip() != "::"):
            out.append(line)
            continue
        base = _indent(line)
        fence = " " * 4 if _in_list_item(lines, i - 1) else ""
        j = i
        while j < len(lines) and not lines[j].strip():
            j += 1
        block: list[str] = []
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            block.append(lines[j])
            j += 1
        while block and not block[-1].strip():
            block.pop()
        if not block:  # "::" with nothing indented after it: not a literal block
            out.append(line)
            continue
        out.append(line.rstrip()[:-1])
        depth = min(_indent(b) for b in block if b.strip())
        out += ["", fence + "```python"]
        out += [fence + b[depth:] if b.strip() else "" for b in block]
        out += [fence + "```", ""]
        i = j
    return "\n".join(out)


def _resolve(obj: griffe.Object, name: str) -> str:
    """The full dotted path of ``name`` as written in ``obj``'s docstring."""
    if name.startswith("reconcile"):
        return name
    head, _, rest = name.partition(".")
    scope: griffe.Object | None = obj if obj.is_module or obj.is_class else obj.parent
    try:
        resolved = scope.resolve(head) if scope is not None else name
    except (griffe.NameResolutionError, AttributeError):
        return name
    return f"{resolved}.{rest}" if rest else resolved


def rewrite(obj: griffe.Object, text: str) -> str:
    """``text`` with roles as optional cross-references and literal blocks fenced."""

    def role(match: re.Match[str]) -> str:
        target = match["target"].strip()
        no_link = target.startswith("!")
        short = target.startswith("~")
        target = target.lstrip("!~")
        if "<" in target and target.endswith(">"):  # :class:`title <path>`
            shown, _, target = target[:-1].partition("<")
            shown = shown.strip()
        else:
            shown = target.rsplit(".", 1)[-1] if short else target
        title = f"<code>{html.escape(shown)}</code>"
        if no_link:
            return title
        identifier = html.escape(_resolve(obj, target), quote=True)
        return f'<autoref identifier="{identifier}" optional>{title}</autoref>'

    return literal_blocks(ROLE.sub(role, text))


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring of the loaded package (see the module docstring)."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj, obj.docstring.value)
