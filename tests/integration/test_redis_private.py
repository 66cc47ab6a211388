"""The redis-py internals reconcile relies on (``reconcile/broker/_redis_private.py``):
present with the parameters the shim passes, behaving as the shim expects against a
real Redis, and worth it (the fast call is cheaper than the public API's)."""

from __future__ import annotations

import time
import timeit

import pytest
import redis
import redis.connection

from reconcile.broker import Broker
from reconcile.broker import _redis_private as private


def test_the_internals_exist_with_the_expected_parameters() -> None:
    problems = private.check_internals()
    assert not problems, (
        f"redis {redis.__version__} changed internals that reconcile/broker/_redis_private.py "
        "uses; adapt the shim or pin redis below this version:\n" + "\n".join(problems))


def test_check_internals_names_a_missing_or_reshaped_internal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", None)
    monkeypatch.setattr(redis.connection.SSLConnection, "_wrap_socket_with_ssl",
                        lambda self, context, sock: sock)
    version = redis.__version__
    assert private.check_internals() == [
        f"redis.connection.AbstractConnection.send_packed_command is gone (redis {version})",
        f"redis.connection.SSLConnection._wrap_socket_with_ssl takes ['self', 'context', 'sock'], "
        f"expected ['self', 'sock'] first (redis {version})",
    ]


def test_evalsha_on_a_free_connection_answers_like_the_public_call(broker: Broker) -> None:
    script = broker.redis.register_script("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}")
    script(keys=["k"], args=["x", 1])  # loaded
    free = private.FreeConnections(broker.redis)
    conn = free.checkout()
    assert private.evalsha(conn, script.sha, "{k}", [b"a", 41]) == [b"{k}", b"a", 42]
    assert private.evalsha(conn, script.sha, "{k}", [b"a", 41]) == broker.redis.evalsha(
        script.sha, 1, "{k}", b"a", 41)
    free.checkin(conn, ok=True)
    assert len(free) == 1 and free.checkout() is conn, "an idle connection is reused"


def test_a_failed_connection_is_disconnected_before_reuse(broker: Broker) -> None:
    free = private.FreeConnections(broker.redis)
    conn = free.checkout()
    conn.connect()
    assert conn._sock is not None
    free.checkin(conn, ok=False)
    assert conn._sock is None and len(free) == 1


def test_client_id_then_blmove_reads_the_id_then_the_move(broker: Broker) -> None:
    k = broker.keys
    broker.redis.lpush(k.queue("q"), b"job")
    free = private.FreeConnections(broker.redis)
    conn = free.checkout()
    client_id, read = private.client_id_then_blmove(conn, k.queue("q"), k.claim("p"), 1.0)
    assert isinstance(client_id, int) and client_id > 0
    assert read() == b"job"
    assert broker.redis.lrange(k.claim("p"), 0, -1) == [b"job"]
    client_id, read = private.client_id_then_blmove(conn, k.queue("q"), k.claim("p"), 0.05)
    assert read() is None, "an empty queue times out with None"
    free.checkin(conn, ok=True)


def test_the_fast_call_costs_less_than_the_public_api(broker: Broker) -> None:
    """What the shim is for: measured on fetch.lua with nothing to settle or lease (the
    server's work is the same for both calls), interleaved rounds, best of each."""
    script, key = broker._fetch, broker.keys.script_key
    args = ["p0", 0, 0, repr(time.time()), 10, 100, 64, 2]
    broker._eval(script, args)
    n, fast, public = 2000, [], []
    for _ in range(5):
        fast.append(timeit.timeit(lambda: broker._eval(script, args), number=n) / n)
        public.append(timeit.timeit(lambda: broker.redis.evalsha(script.sha, 1, key, *args), number=n) / n)
    print(f"\nEVALSHA: shim {min(fast) * 1e6:.1f} us, Redis.evalsha {min(public) * 1e6:.1f} us a call")
    assert min(fast) < min(public)
