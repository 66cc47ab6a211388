"""Every use of a redis-py internal, in one place (the shim between reconcile and redis-py).

redis-py's public command path (``Redis.execute_command``: pool checkout and release
under a lock, the retry wrapper, observability hooks) is paid on every call. The hot
paths (one EVALSHA per enqueue batch, per fetch and per pass page) skip it by talking
to a connection object directly, and the claim of an idle single-queue worker
pipelines two commands on one blocking connection, which the public API cannot
express. The TLS connection bounds its handshake.

Measured with ``timeit`` (``tests/integration/test_redis_private.py`` repeats the comparison),
redis-py 8.1 with hiredis, Redis 7 on loopback, a 2-core machine under load (best of
7 rounds):

* ``fetch.lua`` with nothing to settle or lease, 20,000 calls: :func:`evalsha` on a
  :class:`FreeConnections` connection 79 us a call, ``Redis.evalsha`` 170 us, the
  ``Script`` object 170 us: about 90 us saved on every enqueue batch and every fetch;
* an idle claim of one waiting job, 5,000 claims: :func:`client_id_then_blmove`
  319 us, ``client_id()`` then ``blmove()`` 468 us: one round trip saved per claim.

Internals used, all of ``redis.connection``:

* ``ConnectionPool.make_connection()``: :class:`FreeConnections` makes connections
  outside the pool's bookkeeping, with the pool's settings;
* ``AbstractConnection.pack_command``, ``send_packed_command`` and ``read_response``:
  :func:`evalsha`, :func:`evalsha_then_wait`, :func:`client_id_then_blmove`;
* ``AbstractConnection.disconnect``: :meth:`FreeConnections.checkin`;
* ``AbstractConnection.connect``: :meth:`FreeConnections.checkout` of a
  Sentinel-managed connection (``send_packed_command``'s own lazy connect bypasses
  ``SentinelManagedConnection.connect``, which is where the primary is looked up);
* ``SSLConnection._wrap_socket_with_ssl``: :class:`TLSConnection`.

Supported redis-py: the range in ``pyproject.toml``, 5.1 up to (not including) 9.
5.0 lacks ``_wrap_socket_with_ssl``; :func:`check_internals` finds every internal
as expected in 5.1.1, 5.2.1, 6.0.0, 6.4.0, 7.4.1 and 8.1.0 (the whole suite runs on
8.1.0).
:func:`check_internals`, run by ``tests/integration/test_redis_private.py``, fails loudly naming
the internal when an upgrade removes one or changes its parameters; the same file
checks their behaviour against a real Redis.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

import redis
import redis.connection
import redis.sentinel


class FreeConnections:
    """Idle connections of one client's configuration, outside redis-py's pool.

    Saves redis-py's pool checkout and release (a lock, the in-use set, the health
    check bookkeeping) on each hot-path call: with :func:`evalsha`, about half the
    client-side cost of a call (measured: see the module docs). A plain list is
    the whole pool: ``pop`` and ``append`` are atomic, and a connection is used by one
    thread at a time. A forked child starts with none, never its parent's sockets.
    Connections are made by the client's own pool (``make_connection``), so they carry
    its settings (URL, TLS, timeouts, keepalive, credentials)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._free: list[Any] = []
        self._pid = os.getpid()
        self._generation = 0  # bumped by drop_all; a connection of an older one is dropped
        # A Sentinel-managed connection finds the primary in its connect(); redis-py's
        # lazy connect in send_packed_command skips that (it reconnects to the last
        # address, or to localhost for a new one), so such connections connect here.
        self._connect_first = isinstance(client.connection_pool, redis.sentinel.SentinelConnectionPool)

    def __len__(self) -> int:
        """How many idle connections are kept."""
        return len(self._free)

    def checkout(self) -> Any:
        """An idle connection (redis-py's ``Connection``, whose methods are untyped), or
        a new one (it connects on its first command)."""
        if self._pid != os.getpid():
            self._free, self._pid = [], os.getpid()
        try:
            conn: Any = self._free.pop()
        except IndexError:
            conn = self._client.connection_pool.make_connection()
            conn._reconcile_generation = self._generation
        if self._connect_first:
            try:
                conn.connect()  # a no-op when connected; else asks the Sentinels (with retries)
            except BaseException:
                self._free.append(conn)
                raise
        return conn

    def checkin(self, conn: Any, ok: bool) -> None:
        """Return a connection; one that failed or was interrupted mid-reply (``ok``
        False), or that was in use when :meth:`drop_all` ran, is disconnected first (it
        reconnects on its next use)."""
        if not ok or conn._reconcile_generation != self._generation:
            conn.disconnect()
            conn._reconcile_generation = self._generation
        self._free.append(conn)

    def drop_all(self) -> None:
        """Disconnect every idle connection now and each one in use when it comes back:
        the server they talk to is no longer the primary (a Sentinel failover). They
        reconnect on their next command, through the Sentinels."""
        self._generation += 1
        for conn in list(self._free):
            conn.disconnect()
            conn._reconcile_generation = self._generation


def evalsha(conn: Any, sha: str, key: str, args: Sequence[Any]) -> Any:
    """``EVALSHA sha 1 key *args`` on ``conn``: one packed write, one reply read.

    Together with :class:`FreeConnections` this is what ``Redis.evalsha`` does minus
    its command path; raises what ``read_response`` raises (``NoScriptError``,
    ``ResponseError``, connection errors), which the caller handles."""
    conn.send_packed_command(conn.pack_command("EVALSHA", sha, 1, key, *args))
    return conn.read_response()


def evalsha_then_wait(conn: Any, sha: str, key: str, args: Sequence[Any], replicas: int,
                      timeout_ms: int) -> tuple[Any, int]:
    """``EVALSHA`` then ``WAIT replicas timeout_ms`` in one write (the enqueue of
    ``enqueue_replicas``): returns the script's reply and how many replicas acknowledged.
    Both replies are read even when the script's is an error (the connection stays in
    step), then the error is raised."""
    conn.send_packed_command(conn.pack_command("EVALSHA", sha, 1, key, *args)
                             + conn.pack_command("WAIT", replicas, timeout_ms))
    error: redis.ResponseError | None = None
    reply: Any = None
    try:
        reply = conn.read_response()
    except redis.ResponseError as exc:
        error = exc
    acked = int(conn.read_response())
    if error is not None:
        raise error
    return reply, acked


def client_id_then_blmove(conn: Any, source: str, destination: str, timeout: float) -> tuple[int, Any]:
    """Send ``CLIENT ID`` and ``BLMOVE source destination RIGHT LEFT timeout`` in one
    write; read the client id, then hand back a reader for the (blocking) move.

    Saves a round trip on every idle claim: the id, which lets another thread end the
    wait with ``CLIENT UNBLOCK``, rides in front of the blocking command. Returns
    ``(client_id, read)``, where ``read()`` blocks until the BLMOVE answers."""
    conn.send_packed_command(
        conn.pack_command("CLIENT", "ID")
        + conn.pack_command("BLMOVE", source, destination, "RIGHT", "LEFT", repr(timeout))
    )
    return int(conn.read_response()), conn.read_response


class TLSConnection(redis.SSLConnection):
    """redis-py's TLS connection with its handshake bounded by the connect timeout:
    redis-py runs the handshake under ``socket_timeout`` (none, for blocking commands),
    so a ``rediss://`` URL pointing at a plain-text port waited forever.

    Overrides the private ``_wrap_socket_with_ssl(sock)``: the only hook between the
    TCP connect and the handshake."""

    def _wrap_socket_with_ssl(self, sock: Any) -> Any:
        sock.settimeout(self.socket_connect_timeout)
        wrapped = super()._wrap_socket_with_ssl(sock)  # type: ignore[no-untyped-call]
        wrapped.settimeout(self.socket_timeout)
        return wrapped


class SentinelTLSConnection(redis.sentinel.SentinelManagedConnection, TLSConnection):
    """TLS to a data node found through Sentinel, its handshake bounded as above.
    redis-py's ``SentinelManagedSSLConnection`` with :class:`TLSConnection` in place of
    ``SSLConnection``."""


def check_internals() -> list[str]:
    """What is wrong with the internals above in the installed redis-py: one line per
    internal that is missing or whose parameters changed; empty when all is as this
    module expects."""
    problems: list[str] = []
    expected: list[tuple[type, str, list[str]]] = [
        (redis.connection.ConnectionPool, "make_connection", ["self"]),
        (redis.connection.AbstractConnection, "pack_command", ["self", "args"]),
        (redis.connection.AbstractConnection, "send_packed_command", ["self", "command"]),
        (redis.connection.AbstractConnection, "read_response", ["self"]),
        (redis.connection.AbstractConnection, "disconnect", ["self"]),
        (redis.connection.AbstractConnection, "connect", ["self"]),
        (redis.connection.SSLConnection, "_wrap_socket_with_ssl", ["self", "sock"]),
    ]
    for owner, name, leading in expected:
        func = getattr(owner, name, None)
        where = f"redis.connection.{owner.__name__}.{name}"
        if not callable(func):
            problems.append(f"{where} is gone (redis {redis.__version__})")
            continue
        params = list(inspect.signature(func).parameters)
        if params[: len(leading)] != leading:
            problems.append(f"{where} takes {params}, expected {leading} first (redis {redis.__version__})")
    return problems
