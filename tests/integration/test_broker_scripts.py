"""The Lua scripts as Redis runs them: the prelude once, then the script; each loads,
and EVALSHA with its cached SHA1 keeps working after Redis forgets the scripts."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import orjson
import pytest
import redis

from reconcile.broker import Broker, PushRecord
from reconcile.broker.scripts import PRELUDE, SCRIPTS, script_source, with_prelude
from reconcile.payload import pass_lock

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


@pytest.mark.parametrize("args", [[7], ['a"b', 2], [1, {"a": "x", "z": [1.5, None]}]],
                         ids=["int", "quote", "dict"])
def test_a_compact_pass_payload_names_its_pass_lock_and_unlock_releases_it(
    broker: Broker, args: list[object]
) -> None:
    """reap.lua releases a poison pill's pass lock from its compact payload alone: the
    prelude's pass_lock() gives the lock the worker would derive, and unlock() drops it
    from both generations."""
    member = orjson.dumps(args, option=orjson.OPT_SORT_KEYS)
    head = b'{"queue":"items","jid":"0123456789abcdef01234567","class":"app.Sync","args":'
    payload = head + member + b',"pl":1.5}'
    broker.redis.sadd(broker.keys.plocks("app.Sync"), member)
    broker.redis.sadd(broker.keys.plocks_prev("app.Sync"), member, b"[other]")
    script = broker.redis.register_script(
        with_prelude("local l = pass_lock(ARGV[1]); if l then unlock(l) end; return l or ''"))
    got = script(keys=[broker.keys.queues], args=[payload])
    assert got.decode() == pass_lock("app.Sync", member)
    assert broker.redis.smembers(broker.keys.plocks("app.Sync")) == set()
    assert broker.redis.smembers(broker.keys.plocks_prev("app.Sync")) == {b"[other]"}
    unlocked = payload.replace(b',"pl":', b',"p":')
    assert script(keys=[broker.keys.queues], args=[unlocked]) == b""  # "p": no lock to name
    # tracing on: the pass's traceparent follows the stamp, and the lock is the same
    traced = head + member + b',"pl":1.5,"traceparent":"00-' + b"a" * 32 + b"-" + b"b" * 16 + b'-01"}'
    assert script(keys=[broker.keys.queues], args=[traced]).decode() == pass_lock("app.Sync", member)
