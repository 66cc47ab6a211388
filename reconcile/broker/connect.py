"""Opening Redis: the client every broker uses, built from a validated ``redis_url``."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ._redis_private import TLSConnection

CONNECT_TIMEOUT = 5.0
"""Seconds to open a connection (TCP and TLS handshake): without it a ``rediss://`` URL
pointing at a plain port, or a black-holed address, would hang a command forever."""


def make_client(url: str) -> redis.Redis:
    """A pooled client that retries connection errors with backoff (not replies).
    ``url`` is one validated by :mod:`reconcile.config` (``redis://``, ``rediss://``,
    ``unix://``). Opening a connection, TLS handshake included, takes at most
    :data:`CONNECT_TIMEOUT` seconds. Payloads are bytes end to end
    (``decode_responses=False``)."""
    extra: dict[str, Any] = {}
    if url.lower().startswith("rediss://"):
        extra["connection_class"] = TLSConnection
    return redis.Redis.from_url(
        url,
        **extra,
        decode_responses=False,
        health_check_interval=30,
        socket_keepalive=True,
        socket_connect_timeout=CONNECT_TIMEOUT,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.01), retries=3),
        retry_on_error=[redis.ConnectionError],
    )
