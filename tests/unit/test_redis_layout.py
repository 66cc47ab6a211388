"""The Redis layout is written down four times and the four must agree.

Like a migrations-versus-schema test: each Lua script's header lists the keys it
touches ("Keys touched:"), its body builds key names from the ``{ns}`` prefix ``p``,
``reconcile/broker/keys.py`` is the only Python code that builds key names, and
``docs/redis-layout.md`` claims to list every key. Each source is parsed here, key
names are reduced to their family (``{ns}:queue:<q>`` -> ``queue:*``), and every
disagreement fails naming the key and where it is missing.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from reconcile.broker.keys import Keys
from reconcile.broker.scripts import PRELUDE, SCRIPTS

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "reconcile" / "broker" / "lua"
DOC = ROOT / "docs" / "redis-layout.md"

NOT_KEYS = {"tag", "pattern", "script_key"}
"""Members of ``Keys`` that name no key of their own: the bare hash tag, the SCAN
pattern, and the alias of ``queues`` every script receives as KEYS[1]."""


def family(name: str) -> str:
    """``{ns}:queue:<q>`` / ``p .. ':queue:'`` / ``{ns}:stat:processed`` -> ``queue:*``
    / ``queue:*`` / ``stat:*``; ``{ns}:queues`` -> ``queues``."""
    rest = name.split("}:", 1)[1] if "}:" in name else name.lstrip(":")
    head, sep, _ = rest.partition(":")
    return head + (":*" if sep else "")


def header_of(source: str) -> str:
    """The leading comment block of a script (up to its first line of code)."""
    lines = []
    for line in source.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return "\n".join(lines)


def keys_in_header(source: str) -> set[str]:
    """The keys named in the header's ``Keys touched:`` block (its entry lines, which
    start ``--   {ns}:``, and their continuation lines), as families."""
    found: set[str] = set()
    listing = False
    for line in header_of(source).splitlines():
        if line.startswith("-- Keys touched:"):
            listing = True
        elif listing and line.startswith("--   "):
            found |= {family(name.rstrip(",;")) for name in re.findall(r"\{ns\}:[a-z_]+(?::\S+)?", line)}
        else:
            listing = False  # the next heading (ARGV, Returns...)
    return found


SUFFIX = r"'(:[a-z_]+(?::[a-z_]*)?)'"
"""A written-out key suffix: ``':queues'``, ``':queue:'``, ``':stat:processed'``."""
BUILT = re.compile(r"\bp \.\. " + SUFFIX)
DYNAMIC = re.compile(r"\bp \.\. (?!" + SUFFIX + ")")


def keys_in_code(source: str) -> set[str]:
    """The key families a piece of Lua builds from the prefix ``p`` (``p .. ':queue:'``)."""
    code = "\n".join(line.split("--", 1)[0] for line in source.splitlines())
    return {family(m) for m in BUILT.findall(code)}


def prelude_functions() -> dict[str, str]:
    """Each ``local function`` of prelude.lua -> its text."""
    text = (LUA / PRELUDE).read_text()
    parts = re.split(r"^local function (\w+)", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def prelude_keys(called: set[str]) -> set[str]:
    """Key families built by the prelude functions in ``called``, and by those they call."""
    functions = prelude_functions()
    seen: set[str] = set()
    todo = list(called)
    out: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        body = functions[name]
        out |= keys_in_code(body)
        todo += [f for f in functions if f != name and re.search(rf"\b{f}\(", body)]
    return out


def keys_touched(source: str) -> set[str]:
    """What a script's body builds, directly or through the prelude functions it calls."""
    body = "\n".join(line.split("--", 1)[0] for line in source.splitlines())
    called = {f for f in prelude_functions() if re.search(rf"\b{f}\(", body)}
    return keys_in_code(source) | prelude_keys(called)


def keys_of_keys_py() -> dict[str, str]:
    """Family -> member name, for every member of ``Keys`` that names a key."""
    keys = Keys("ns")
    out: dict[str, str] = {}
    for name, member in inspect.getmembers(Keys):
        if name.startswith("_") or name in NOT_KEYS or name == "namespace":
            continue
        if isinstance(member, property):
            value = getattr(keys, name)
        elif inspect.isfunction(member):
            value = getattr(keys, name)("x")
        else:
            continue
        out[family(value)] = name
    return out


def keys_in_doc() -> set[str]:
    """The first column of the ``## Keys`` table of docs/redis-layout.md."""
    text = DOC.read_text()
    section = text.split("## Keys", 1)[1].split("\n## ", 1)[0]
    return {family(m) for m in re.findall(r"^\| `(\{ns\}:[^`]+)` \|", section, flags=re.M)}


def scripts() -> dict[str, str]:
    return {name: (LUA / name).read_text() for name in SCRIPTS}


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_script_header_lists_exactly_the_keys_its_code_touches(name: str) -> None:
    source = (LUA / name).read_text()
    listed, touched = keys_in_header(source), keys_touched(source)
    assert touched, f"{name}: no key found in its code (is the parser still right?)"
    missing = sorted(touched - listed)
    assert not missing, f"{name} touches {missing} but its 'Keys touched:' header does not list them"
    extra = sorted(listed - touched)
    assert not extra, f"{name}'s header lists {extra}, which its code never builds"


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_build_key_names_only_from_written_out_suffixes(name: str) -> None:
    """``p .. ':' .. set`` would hide a key from this file's parser (and from readers)."""
    code = "\n".join(line.split("--", 1)[0] for line in (LUA / name).read_text().splitlines())
    hidden = [line.strip() for line in code.splitlines() if DYNAMIC.search(line)]
    assert not hidden, f"{name} builds key names this test cannot read: {hidden}"


def test_every_key_a_script_touches_is_a_member_of_keys_py() -> None:
    known = keys_of_keys_py()
    for name, source in scripts().items():
        unknown = sorted((keys_touched(source) | keys_in_header(source)) - set(known))
        assert not unknown, f"{name} touches {unknown}, which reconcile/broker/keys.py does not name"


def test_docs_list_every_key_of_keys_py_and_nothing_else() -> None:
    known, documented = keys_of_keys_py(), keys_in_doc()
    missing = sorted(f"{{ns}}:{f} (Keys.{known[f]})" for f in set(known) - documented)
    assert not missing, f"docs/redis-layout.md's Keys table does not list {missing}"
    extra = sorted(documented - set(known))
    assert not extra, f"docs/redis-layout.md lists {extra}, which reconcile/broker/keys.py does not name"


def test_the_parsers_read_what_they_claim() -> None:
    """The parsers above, on a known script, so that a parser that finds nothing cannot
    pass the tests above by agreeing with another that finds nothing."""
    release = (LUA / "release.lua").read_text()
    assert keys_in_header(release) == {"lease:*", "claim:*", "queue:*", "queues", "wake:*", "proc:*",
                                       "alive:*", "procs", "beats", "jobs"}
    assert "wake:*" in keys_touched(release) and "wake:*" not in keys_in_code(release), (
        "release.lua reaches {ns}:wake:<q> only through the prelude's announce()")
    assert {"queue:*", "incident", "epoch", "stat:*"} <= set(keys_of_keys_py())
    assert {"queue:*", "queues", "epoch"} <= keys_in_doc()
    assert family("{ns}:stat:processed") == "stat:*" and family("{ns}:queues") == "queues"
