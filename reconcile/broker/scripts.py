"""The Lua scripts as Redis runs them: ``lua/prelude.lua`` followed by the script's body.

Redis cannot load one script from another, so the definitions every script shares
(the ``{ns}`` prefix, the wake-up token, the lease-field and payload formats, sliced
``unpack``) live once in ``prelude.lua`` and are prepended here, at load time. The
result is registered with redis-py's ``register_script``: its SHA1 is that of the
whole text, sent with EVALSHA and reloaded on NOSCRIPT (after ``SCRIPT FLUSH`` or a
Redis restart), as for any script.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

PRELUDE = "prelude.lua"
"""The file prepended to every script."""

SCRIPTS = (
    "enqueue.lua", "fetch.lua", "heartbeat.lua", "locate.lua", "pass_enqueue.lua", "promote.lua",
    "reap.lua", "release.lua", "set_move.lua", "trim_dead.lua",
)
"""Every script of ``lua/`` (the prelude excepted), each registered by the broker."""


def _read(name: str) -> str:
    return resources.files("reconcile.broker").joinpath("lua", name).read_text("utf-8")


def with_prelude(body: str) -> str:
    """``body`` as Redis would run it: ``prelude.lua`` first. For a script that is not
    one of :data:`SCRIPTS` (the previous ``reap.lua`` that ``benchmarks/reap_cost.py``
    and the upgrade tests run beside the current one)."""
    prelude = _read(PRELUDE)
    return prelude + ("" if prelude.endswith("\n") else "\n") + body


@cache
def script_source(name: str) -> str:
    """The text Redis runs for script ``name`` (one of :data:`SCRIPTS`): the prelude,
    then the script. Read once per process."""
    if name not in SCRIPTS:
        raise ValueError(f"no Lua script named {name!r}; known: {', '.join(SCRIPTS)}")
    return with_prelude(_read(name))
