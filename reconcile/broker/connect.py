"""Opening Redis: the client every broker uses, built from a validated ``redis_url``.

``redis://``, ``rediss://`` and ``unix://`` URLs go to redis-py's ``from_url``. A
``redis+sentinel://`` URL (:mod:`reconcile.sentinel_url`) gets redis-py's own Sentinel
client: ``Sentinel(...).master_for(service)``, a :class:`~redis.sentinel.SentinelConnectionPool`
whose connections ask the Sentinels for the primary's address each time they connect.
What makes every process follow a failover without a restart:

* a reply ``READONLY`` (the server we talk to was demoted to a replica) is turned by
  redis-py's ``SentinelManagedConnection`` into a ``ConnectionError`` after dropping
  the connection; the client's retry (below) reconnects through the Sentinels, to the
  new primary. So a demotion costs a retried command, never a failed job;
* :func:`follow_primary` (through ``Broker.follow_now_and_then``: at most once a second
  per process, from the enqueue and fetch paths, workers' heartbeats and the
  scheduler's Redis watch) asks the Sentinels where the primary is and drops idle
  connections to a server that is no longer it: a demoted primary keeps accepting
  writes until the Sentinels reconfigure it (about 10 s after ``SENTINEL FAILOVER``),
  and writes it acknowledges then are lost.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.sentinel
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from ..sentinel_url import SentinelTarget, is_sentinel_url, parse_sentinel_url
from ._redis_private import SentinelTLSConnection, TLSConnection

CONNECT_TIMEOUT = 5.0
"""Seconds to open a connection (TCP and TLS handshake): without it a ``rediss://`` URL
pointing at a plain port, or a black-holed address, would hang a command forever."""

SENTINEL_TIMEOUT = 1.0
"""Seconds for one Sentinel's answer (connect and reply): a Sentinel that is down or
black-holed is skipped for the next one after this long. Each Sentinel is tried once
more at once, no backoff (redis-py's default retries with backoff took 12 s to give
up on three stopped Sentinels)."""

RETRIES = 3
SENTINEL_RETRIES = 10
"""Retries of a command that lost its connection. Through Sentinel there are more, with
the same capped backoff (0.01 s doubling to 1 s: about 5.6 s in all), so a command sent
while the Sentinels elect a new primary (``down-after-milliseconds`` plus the election)
waits for it instead of failing."""


def _retry(retries: int) -> Retry:
    return Retry(ExponentialBackoff(cap=1.0, base=0.01), retries=retries)


def make_client(url: str, *, socket_timeout: float = 0.0,
                connect_timeout: float = CONNECT_TIMEOUT) -> redis.Redis:
    """A pooled client that retries connection errors with backoff (not replies).
    ``url`` is one validated by :mod:`reconcile.config` (``redis://``, ``rediss://``,
    ``unix://``, ``redis+sentinel://``). Opening a connection, TLS handshake included,
    takes at most ``connect_timeout`` seconds (default :data:`CONNECT_TIMEOUT`);
    ``socket_timeout`` (0: none) bounds each reply (``redis_socket_timeout``, checked
    against the blocking waits by the settings). Payloads are bytes end to end
    (``decode_responses=False``)."""
    common: dict[str, Any] = {
        "decode_responses": False,
        "health_check_interval": 30,
        "socket_keepalive": True,
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout or None,
        "retry_on_error": [redis.ConnectionError],
    }
    if is_sentinel_url(url):
        return _sentinel_client(parse_sentinel_url(url), common)
    if url.lower().startswith("rediss://"):
        common["connection_class"] = TLSConnection
    return redis.Redis.from_url(url, **common, retry=_retry(RETRIES))


class _Sentinels(redis.sentinel.Sentinel):
    """redis-py's ``Sentinel`` whose "no primary" error is one line: redis-py's names
    every Sentinel client with its whole connection ``repr`` (several kB per log line)."""

    def discover_master(self, service_name: str) -> Any:
        try:
            return super().discover_master(service_name)  # type: ignore[no-untyped-call, unused-ignore]
        except redis.sentinel.MasterNotFoundError:
            hosts = ", ".join("{host}:{port}".format_map(s.connection_pool.connection_kwargs)
                              for s in self.sentinels)
            raise redis.sentinel.MasterNotFoundError(
                f"no Sentinel named a primary for service {service_name!r} (asked {hosts}: "
                "unreachable, or the service is unknown or down)") from None


def _sentinel_client(target: SentinelTarget, common: dict[str, Any]) -> redis.Redis:
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": min(SENTINEL_TIMEOUT, common["socket_connect_timeout"]),
        "socket_timeout": SENTINEL_TIMEOUT,
        "username": target.sentinel_username,
        "password": target.sentinel_password,
        "ssl": target.sentinel_ssl,
        "retry": Retry(NoBackoff(), retries=1),
    }
    manager = _Sentinels(  # type: ignore[no-untyped-call, unused-ignore]
        list(target.sentinels), sentinel_kwargs=sentinel_kwargs)
    node: dict[str, Any] = dict(common, db=target.db, username=target.username,
                                password=target.password, retry=_retry(SENTINEL_RETRIES))
    if target.ssl:
        node["connection_class"] = SentinelTLSConnection
    client: redis.Redis = manager.master_for(target.service, **node)  # type: ignore[no-untyped-call, unused-ignore]
    return client


def is_sentinel_client(client: redis.Redis) -> bool:
    """True if ``client`` finds its server through Sentinel."""
    return isinstance(client.connection_pool, redis.sentinel.SentinelConnectionPool)


def follow_primary(client: redis.Redis) -> tuple[str, int] | None:
    """Ask the Sentinels where the primary is (one round trip; ``MasterNotFoundError``,
    a ``ConnectionError``, if none answers) and return it; if it moved since the pool
    last looked, the pool's idle connections are dropped (they reconnect to the new
    primary on their next command; one in use is dropped when it is given back, by the
    pool's ownership check). None for a client that does not use Sentinel."""
    pool = client.connection_pool
    if not isinstance(pool, redis.sentinel.SentinelConnectionPool):
        return None
    address = pool.get_master_address()  # type: ignore[no-untyped-call]  # drops idle ones if it moved
    return (str(address[0]), int(address[1]))
