"""The Lua scripts as Redis runs them: the prelude once, then the script; each loads,
and EVALSHA with its cached SHA1 keeps working after Redis forgets the scripts."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import redis

from reconcile.broker import Broker, PushRecord
from reconcile.broker.scripts import PRELUDE, SCRIPTS, script_source

LUA = Path(__file__).resolve().parents[2] / "reconcile" / "broker" / "lua"
PRELUDE_TEXT = (LUA / PRELUDE).read_text()
SHARED = re.findall(r"^local function (\w+)", PRELUDE_TEXT, flags=re.M)


def test_every_file_of_lua_is_a_known_script_or_the_prelude() -> None:
    assert sorted(p.name for p in LUA.glob("*.lua")) == sorted([PRELUDE, *SCRIPTS])


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_prelude_comes_first_and_once(name: str) -> None:
    source = script_source(name)
    assert source.startswith(PRELUDE_TEXT)
    assert source.count("-- prelude.lua:") == 1
    assert source.count("local p = string.sub(KEYS[1]") == 1, "the prefix is defined by the prelude only"
    body = source[len(PRELUDE_TEXT):]
    assert body == (LUA / name).read_text()
    redefined = [f for f in SHARED if re.search(rf"\bfunction {f}\b|\blocal {f}\b", body)]
    assert not redefined, f"{name} redefines the prelude's {redefined}"


def test_the_prelude_defines_what_the_scripts_share() -> None:
    assert {"wake", "announce", "lease_field", "field_queue", "payload_queue", "payload_jid",
            "call_sliced"} <= set(SHARED)
    for name in SCRIPTS:
        header = (LUA / name).read_text().split("\n\n", 1)[0]
        assert "Runs after prelude.lua" in header, f"{name}'s header does not say it runs after the prelude"


def test_unknown_script_names_are_refused() -> None:
    with pytest.raises(ValueError, match=re.escape("no Lua script named 'nope.lua'")):
        script_source("nope.lua")


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_loads_under_its_cached_sha(broker: Broker, name: str) -> None:
    source = script_source(name)
    assert broker.redis.script_load(source) == hashlib.sha1(source.encode()).hexdigest()
    assert broker.register(name).sha == hashlib.sha1(source.encode()).hexdigest()


def test_calls_survive_a_script_flush(broker: Broker) -> None:
    """EVALSHA of the cached SHA answers NOSCRIPT once Redis forgot the scripts: the hot
    path (enqueue) and the Script objects (promote) load them again and succeed."""
    assert broker.push([PushRecord("default", 0, "", 0, b'{"queue":"default","jid":"a"}')]) == [True]
    broker.redis.script_flush()
    assert not any(broker.redis.script_exists(broker._enqueue.sha, broker._promote.sha))
    assert broker.push([PushRecord("default", 0, "", 0, b'{"queue":"default","jid":"b"}')]) == [True]
    assert broker.promote() == (0, 0, False)
    assert all(broker.redis.script_exists(broker._enqueue.sha, broker._promote.sha))
    assert broker.redis.llen(broker.keys.queue("default")) == 2


def test_set_move_refuses_a_set_it_does_not_know(broker: Broker) -> None:
    """set_move.lua refuses a set name it does not know instead of building a key from it."""
    with pytest.raises(redis.ResponseError, match=re.escape("set_move.lua: no set named bogus")):
        broker._set_move(keys=[broker.keys.script_key], args=[64, "bogus", "X", b"m", ""])
