"""The ``redis+sentinel://`` form of ``redis_url``: parsed once, here, for the settings'
check (:mod:`reconcile.config`) and the client (:mod:`reconcile.broker.connect`).

The form::

    redis+sentinel://[user:password@]host1[:port][,host2[:port]...]/<service>[/<db>][?query]

* ``user:password@`` -- credentials of the Redis **data nodes** (primary and replicas),
  as in ``redis://``; percent-encoded characters are decoded;
* ``host[:port]`` -- one or more Sentinels, comma-separated (default port 26379; an
  IPv6 address in brackets, ``[::1]:26379``);
* ``<service>`` -- the master name the Sentinels monitor (``sentinel monitor <name>``);
* ``<db>`` -- the database number, default 0.

Query parameters (anything else is refused, so a typo never goes unnoticed):

=====================  ===============================================================
``sentinel_password``  password of the Sentinels themselves (``requirepass`` in
                       sentinel.conf); default none. Masked wherever the URL is shown.
``sentinel_username``  ACL user for the Sentinels; default none (``default``).
``ssl``                ``true``: TLS to the data nodes; default ``false``.
``sentinel_ssl``       ``true``: TLS to the Sentinels; default: the value of ``ssl``.
=====================  ===============================================================

Parsing is by hand, not ``urllib``: a comma-separated host list has no port that
``urlsplit`` can read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

SCHEME = "redis+sentinel"
DEFAULT_PORT = 26379
QUERY_PARAMS = ("sentinel_password", "sentinel_username", "ssl", "sentinel_ssl")
"""The query parameters a ``redis+sentinel://`` URL may carry."""

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]/@,]+)(?::(\d+))?$")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SentinelURLError(ValueError):
    """Why a ``redis+sentinel://`` URL is unusable (the text never holds a password)."""


@dataclass(frozen=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names. ``repr`` hides the passwords."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False
    sentinel_ssl: bool = False

    def __repr__(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return (f"SentinelTarget({hosts}/{self.service}/{self.db}, user={self.username!r}, "
                f"ssl={self.ssl}, sentinel_ssl={self.sentinel_ssl})")


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(SCHEME + "://")


def _flag(name: str, raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise SentinelURLError(f"has {name}={raw!r} in its query (allowed: true or false)")


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The :class:`SentinelTarget` of ``url``; raises :class:`SentinelURLError` naming
    the part that is wrong and what is allowed."""
    if not is_sentinel_url(url):
        raise SentinelURLError(f"must start with {SCHEME}://")
    rest = url[len(SCHEME) + 3:]
    rest, _, query = rest.partition("?")
    rest = rest.partition("#")[0]
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    if not hostlist:
        raise SentinelURLError("must name at least one Sentinel (host:26379[,host2:26379])")
    sentinels = []
    for item in hostlist.split(","):
        m = _HOST.match(item.strip())
        if not m:
            raise SentinelURLError(
                f"has a Sentinel address {item.strip()!r} that is not host or host:port")
        host = m.group(1).strip("[]")
        port = int(m.group(2)) if m.group(2) else DEFAULT_PORT
        if not 0 < port < 65536:
            raise SentinelURLError(f"has a Sentinel port {port} outside 1..65535")
        sentinels.append((host, port))
    parts = [p for p in path.split("/")] if path else []
    if parts and parts[-1] == "":
        parts.pop()  # a trailing slash
    if not parts or not parts[0]:
        raise SentinelURLError(
            "must name the Sentinel service after the hosts (redis+sentinel://host:26379/mymaster/0)")
    if len(parts) == 1 and parts[0].isdigit():
        # redis://host/0 habits: a database number where the service name belongs
        raise SentinelURLError(
            f"must name the Sentinel service before the database number "
            f"(redis+sentinel://host:26379/mymaster/{parts[0]}), not only /{parts[0]}")
    if len(parts) > 2:
        raise SentinelURLError("must be /<service>/<db> after the hosts, not a longer path")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise SentinelURLError(f"must end in a database number after the service, not {parts[1]!r}")
        db = int(parts[1])
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in QUERY_PARAMS:
            raise SentinelURLError(
                f"has an unknown query parameter {key!r} (allowed: {', '.join(QUERY_PARAMS)})")
        options[key] = value
    ssl = _flag("ssl", options["ssl"]) if "ssl" in options else False
    sentinel_ssl = _flag("sentinel_ssl", options["sentinel_ssl"]) if "sentinel_ssl" in options else ssl
    return SentinelTarget(
        sentinels=tuple(sentinels), service=unquote(parts[0]), db=db, username=username,
        password=password, sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None, ssl=ssl,
        sentinel_ssl=sentinel_ssl)
