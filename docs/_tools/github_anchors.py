"""An mkdocs hook: heading anchors on the site are the ones GitHub makes.

The pages are read in two places, GitHub and the site, and their links to headings
(``cli.md#reconcile-status---json``, ``#targets-1``) are written for GitHub. Two rules
differ between GitHub and Python-Markdown's ``toc`` extension:

* the slug of a heading: GitHub turns each space into a hyphen and keeps the hyphens
  that were there (``reconcile status --json`` -> ``reconcile-status---json``);
  Python-Markdown collapses them. ``mkdocs.yml`` sets ``toc.slugify`` to
  ``pymdownx.slugs.slugify(case="lower")``, which follows GitHub;
* the anchor of a repeated heading: GitHub appends ``-1``, ``-2``; Python-Markdown
  appends ``_1``, ``_2`` and has no option for it. This hook replaces ``toc``'s
  ``unique`` function, which it looks up by name on each heading, with GitHub's rule.

With both, one link works on GitHub and on the site, and ``mkdocs build --strict``
(which checks anchors) fails on the links that are broken on GitHub too.
"""

from __future__ import annotations

from collections.abc import MutableSet
from typing import Any

import markdown.extensions.toc as toc  # type: ignore[import-untyped]  # no stubs shipped
from mkdocs.config.defaults import MkDocsConfig


def github_unique(id: str, ids: MutableSet[str], *_: Any) -> str:
    """``id``, or ``id-1``, ``id-2``... for the first one not in ``ids`` (added to it)."""
    if id in ids or not id:
        n = 1
        while f"{id}-{n}" in ids:
            n += 1
        id = f"{id}-{n}"
    ids.add(id)
    return id


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    toc.unique = github_unique
    return config
