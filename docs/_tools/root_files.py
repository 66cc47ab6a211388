"""An mkdocs hook: the repository's root Markdown files (SECURITY.md ...) on the site.

Pages in ``docs/`` link to files at the root of the repository the way GitHub reads
them (``[SECURITY.md](../SECURITY.md)``), and those files link back into ``docs/``
(``[docs/security.md](docs/security.md)``). Both links must stay valid on GitHub, and
neither target exists on the site, where only ``docs/`` is published. So:

* every nav entry ``project/NAME.md`` publishes the root file ``NAME.md`` as that
  page (the file is read at build time, never copied: the root file stays the one
  source). A nav entry whose root file is missing fails the build;
* in a ``docs/`` page, a link that leaves ``docs/`` for a published root file points
  to its page instead;
* in a published root file, a link into ``docs/`` points to the site's page, and a
  link to another published root file to its page.

Any other link out of ``docs/`` is left as written, so ``mkdocs build --strict``
reports it; when its target is a file of the repository, this hook says what to do
(publish a root Markdown file by adding it to the nav; link anything else, such as
source code, by its URL). Loaded by ``mkdocs.yml`` (``hooks:``).
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.livereload import LiveReloadServer
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

PREFIX = "project/"

# Under "mkdocs.", so that --strict counts its warnings.
log = logging.getLogger("mkdocs.hooks.root_files")

# A Markdown inline link or image: [text](target "title"). Code spans and fenced
# blocks are not links in Markdown, but a literal "](x.md)" in them is rare enough in
# these files not to need a full parser; rewriting one would only change a path.
LINK = re.compile(r"(?P<head>!?\[[^\]]*\]\()(?P<target>[^)\s#]+)(?P<tail>[^)]*\))")


def _nav_paths(nav: Any) -> list[str]:
    """Every page path named in the (nested) nav config."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [p for item in nav for p in _nav_paths(item)]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in _nav_paths(value)]
    return []


def _published(config: MkDocsConfig) -> dict[str, str]:
    """Root file name -> its page's src path, for every ``project/NAME.md`` in the nav."""
    return {p.removeprefix(PREFIX): p for p in _nav_paths(config.nav) if p.startswith(PREFIX)}


def _root(config: MkDocsConfig) -> Path:
    return Path(config.config_file_path).parent


def _docs(config: MkDocsConfig) -> str:
    """The docs folder, relative to the repository root (``docs``)."""
    return posixpath.relpath(Path(config.docs_dir).resolve(), _root(config).resolve())


def on_files(files: Files, *, config: MkDocsConfig) -> Files:
    root = _root(config)
    for name, src in _published(config).items():
        source = root / name
        if "/" in name or not source.is_file():
            raise PluginError(f"nav names {src!r}, but there is no root file {name!r} to publish there")
        files.append(File.generated(config, src, abs_src_path=str(source)))
    return files


def on_serve(server: LiveReloadServer, *, config: MkDocsConfig, builder: Any) -> LiveReloadServer:
    """``mkdocs serve`` rebuilds when a published root file changes, as for a page."""
    for name in _published(config):
        server.watch(str(_root(config) / name))
    return server


def _rewrite(markdown: str, where: str, page_dir: str, repo_dir: str, config: MkDocsConfig) -> str:
    """``markdown`` with the links described in the module docstring pointed at pages.

    ``where`` names the page in messages, ``page_dir`` is its folder on the site
    (relative to ``docs/``), ``repo_dir`` the folder its source file is in (relative to
    the repository root).
    """
    published = _published(config)
    docs = _docs(config)

    def link(match: re.Match[str]) -> str:
        target = match["target"]
        if "://" in target or target.startswith(("/", "mailto:")):
            return match[0]
        in_repo = posixpath.normpath(posixpath.join(repo_dir, target))
        if in_repo in published:
            site_target = published[in_repo]
        elif in_repo.startswith(docs + "/"):
            site_target = in_repo.removeprefix(docs + "/")
        else:
            if (_root(config) / in_repo).is_file():
                fix = (
                    f"add '{PREFIX}{in_repo}' to the nav of mkdocs.yml to publish it"
                    if "/" not in in_repo and in_repo.endswith(".md")
                    else "only docs/ and the root Markdown files in the nav are on the site: "
                    "link to the file's URL instead"
                )
                log.warning("%s links to %r, outside docs/: %s", where, in_repo, fix)
            return match[0]
        new = posixpath.relpath(site_target, page_dir or ".")
        return f"{match['head']}{new}{match['tail']}"

    return LINK.sub(link, markdown)


def on_page_markdown(markdown: str, *, page: Page, config: MkDocsConfig, files: Files) -> str:
    src = page.file.src_uri
    page_dir = posixpath.dirname(src)
    docs = _docs(config)
    root_file = {src_uri: name for name, src_uri in _published(config).items()}
    if src in root_file:
        return _rewrite(markdown, root_file[src], page_dir, "", config)
    return _rewrite(markdown, f"{docs}/{src}", page_dir, posixpath.join(docs, page_dir), config)
