"""The dashboard as a WSGI application (Sidekiq Web's place in reconcile).

``Dashboard(settings)`` is a WSGI callable: mount it in your web app behind your own
authentication (or give it ``auth=``), or run it alone with ``reconcile web``
(:func:`serve`, which binds 127.0.0.1 by default). See ``docs/web.md``.

Contracts:

* Pages (GET): ``/`` (queues, sets, processes, counters), ``/queue?name=Q``,
  ``/scheduled``, ``/retry``, ``/dead``, ``/quarantine`` and ``/runs`` (PostgreSQL),
  ``/status.json`` (:func:`reconcile.api.status`), ``/metrics`` (the same for
  Prometheus, see :mod:`.metrics`). ``?refresh=N`` reloads a page every N seconds.
* Actions (POST, form-encoded): ``/dead/retry``, ``/dead/delete``,
  ``/scheduled/run``, ``/scheduled/delete``, ``/retry/run``, ``/retry/delete`` (``jid``
  repeated, each optionally with its ``score`` at the same position, or ``all=1``;
  see :mod:`reconcile.sets`), ``/quarantine/release`` (``job`` and ``key`` as JSON).
  Each answers 303 back to its page with what it did.
* Every request is checked, in this order, before anything is read:
  its ``Host`` must be an allowed name (400 otherwise: the DNS-rebinding defence;
  :data:`LOOPBACK_HOSTS` plus ``allowed_hosts``, ``["*"]`` for any), ``auth`` must
  accept it (401 with a challenge for :class:`BasicAuth`, 403 for another hook), and
  its body must be at most ``max_body`` bytes by its ``Content-Length`` (413, unread).
* Actions are refused (403) unless the request comes from the dashboard's own origin:
  its ``Origin`` (or, without one, ``Referer``) must name the ``Host`` it was sent
  to, and a ``Sec-Fetch-Site`` header, when sent, must say ``same-origin``. That is
  the cross-site request forgery defence; it needs no session or secret, so it works
  with any number of web processes. ``read_only=True`` refuses every action and
  hides the buttons.
* Every response, error pages included, carries a strict Content-Security-Policy
  (nothing but the page's own nonce-tagged style and script), ``X-Frame-Options:
  DENY``, ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: same-origin`` and
  ``Cache-Control: no-store``.
* Every value shown is HTML-escaped. An unreachable Redis or PostgreSQL gives a 503
  page naming it, any other failure a 500 (logged with its traceback), never a
  traceback in the response.

The module is over 400 lines because the request checks (host, auth, body size,
origin, security headers) and the standalone server's deadlines sit beside the routes
they guard, so that one reading shows every check a request passes; the pages
themselves live in :mod:`.pages` and the metrics in :mod:`.metrics`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import io
import ipaddress
import json
import logging
import math
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
import sqlalchemy as sa

from .. import sets
from ..api import status
from ..broker import Broker, get_broker
from ..config import Settings, get_settings
from . import metrics, pages
from .html import layout

log = logging.getLogger("reconcile.web")

StartResponse = Callable[..., Any]
Page = Callable[[pages.View], tuple[str, str]]

MAX_BODY_BYTES = 64 * 1024
"""Default ``max_body``: largest request body accepted (action forms are tiny)."""

READ_TIMEOUT = 10.0
"""Default seconds the standalone server waits for a whole request (line, headers,
body) before it drops the connection; also the timeout of each write."""

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
"""Host names always allowed."""

Auth = Callable[[dict[str, Any]], bool]
"""An authentication hook: True lets the request (a WSGI environ) through."""

PAGES: dict[str, Page] = {
    "/": pages.overview,
    "/queue": pages.queue,
    "/scheduled": pages.set_page("scheduled"),
    "/retry": pages.set_page("retry"),
    "/dead": pages.set_page("dead"),
    "/quarantine": pages.quarantine,
    "/runs": pages.runs,
}
NAV = (("Overview", "/"), ("Scheduled", "/scheduled"), ("Retries", "/retry"),
       ("Dead", "/dead"), ("Quarantine", "/quarantine"), ("Passes", "/runs"))


class Dashboard:
    """The WSGI application. Without ``settings`` it reads the process settings at each
    request, so it may be built at import, before the app calls ``reconcile.configure()``.

    ``allowed_hosts``: names (no port) accepted in the ``Host`` header besides
    :data:`LOOPBACK_HOSTS`; ``["*"]`` accepts any (when a proxy in front checks it).
    Mounted on a public name, give that name here. ``auth``: a hook called with each
    request's environ, True to serve it (:class:`BasicAuth` is one; None: no check,
    authenticate in front). ``max_body``: largest request body, in bytes."""

    def __init__(self, settings: Settings | None = None, *, read_only: bool = False,
                 allowed_hosts: Iterable[str] = (), auth: Auth | None = None,
                 max_body: int = MAX_BODY_BYTES) -> None:
        self._settings = settings
        self.read_only = read_only
        names = [h.strip().lower().rstrip(".") for h in allowed_hosts]
        self.any_host = "*" in names
        self.allowed_hosts = frozenset(
            _bare(n) for n in (*LOOPBACK_HOSTS, *names) if n and n != "*")
        self.auth = auth
        self.max_body = max_body
        self.actions: dict[str, Callable[[dict[str, list[str]]], tuple[str, str]]] = {}
        for which, spec in pages.SET_PAGES.items():  # the paths the pages' buttons post to
            self.actions[f"/{which}/{spec.move}"] = functools.partial(self._set_change, which, "move")
            self.actions[f"/{which}/delete"] = functools.partial(self._set_change, which, "delete")
        self.actions["/quarantine/release"] = self._release
        self._metrics_for: metrics.DashboardMetrics | None = None

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    @property
    def broker(self) -> Broker:
        return get_broker(self.settings)  # cached per settings

    def _metrics(self) -> metrics.DashboardMetrics:
        """The ``/metrics`` registry of the current settings (made again if they changed)."""
        current = self._metrics_for
        if current is None or current.settings is not self.settings:
            current = self._metrics_for = metrics.DashboardMetrics(self.settings, self.broker)
        return current

    def host_allowed(self, environ: dict[str, Any]) -> bool:
        """Whether the request's ``Host`` (port ignored; ``SERVER_NAME`` without one)
        is an allowed name."""
        if self.any_host:
            return True
        host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or ""
        return host_name(host) in self.allowed_hosts

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            refused = self._gate(environ, start_response)
            if refused is not None:
                return refused
            return self._route(environ, start_response)
        except Exception:
            # a bug, or bytes nothing expected: the operator sees a page, the log the traceback
            log.exception("dashboard: %s %s failed", environ.get("REQUEST_METHOD"),
                          environ.get("PATH_INFO"))
            return _reply(start_response, "500 Internal Server Error",
                          b"internal error; the traceback is in the dashboard's log\n", _TEXT)

    def _gate(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes] | None:
        """The checks every request passes first (see the module docs); None when it may go on."""
        if not self.host_allowed(environ):
            log.warning("dashboard: refused Host %r (not an allowed host name)", environ.get("HTTP_HOST"))
            return _reply(start_response, "400 Bad Request",
                          b"refused: this Host is not an allowed name of the dashboard "
                          b"(reconcile web --allowed-host NAME)\n", _TEXT)
        if self.auth is not None and not self.auth(environ):
            challenge = getattr(self.auth, "challenge", None)
            if isinstance(challenge, str):
                return _reply(start_response, "401 Unauthorized", b"authentication required\n",
                              _TEXT, www_authenticate=challenge)
            return _reply(start_response, "403 Forbidden", b"not authorized\n", _TEXT)
        try:
            size = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _reply(start_response, "400 Bad Request", b"bad Content-Length\n", _TEXT)
        if size > self.max_body or size < 0:
            return _reply(start_response, "413 Content Too Large",
                          f"request body over {self.max_body} bytes\n".encode(), _TEXT)
        return None

    def _route(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        view = pages.View(self.settings, self.broker, environ.get("SCRIPT_NAME", "").rstrip("/"),
                          query, self.read_only)
        try:
            if path == "/status.json" and method in ("GET", "HEAD"):
                body = json.dumps(status(self.settings, self.broker)).encode()
                return _reply(start_response, "200 OK", body, "application/json")
            if path == "/metrics" and method in ("GET", "HEAD"):
                body = self._metrics().render()
                return _reply(start_response, "200 OK", body, metrics.CONTENT_TYPE)
            if path in PAGES:
                if method not in ("GET", "HEAD"):
                    return _reply(start_response, "405 Method Not Allowed", b"GET only\n", _TEXT,
                                  allow="GET, HEAD")
                return self._page(view, PAGES[path], start_response)
            if path in self.actions:
                if method != "POST":
                    return _reply(start_response, "405 Method Not Allowed", b"POST only\n", _TEXT,
                                  allow="POST")
                return self._act(environ, view, path, start_response)
            return _reply(start_response, "404 Not Found", b"not found\n", _TEXT)
        except (redis.RedisError, sa.exc.SQLAlchemyError) as exc:
            which = "Redis" if isinstance(exc, redis.RedisError) else "PostgreSQL"
            log.warning("dashboard: %s unavailable: %s", which, exc)
            nonce = _nonce()
            html = layout("Unavailable", "", self._nav(view), self.settings.namespace,
                          error=f"{which} could not be read: {str(exc).strip()[:300]}", nonce=nonce)
            return _reply(start_response, "503 Service Unavailable", html, nonce=nonce)

    def _nav(self, view: pages.View) -> list[tuple[str, str]]:
        return [(label, view.url(href)) for label, href in NAV]

    def _page(self, view: pages.View, page: Page, start_response: StartResponse) -> Iterable[bytes]:
        title, body = page(view)
        refresh = view.query.get("refresh", "")
        nonce = _nonce()
        html = layout(title, body, self._nav(view), self.settings.namespace,
                      refresh=int(refresh) if refresh.isdigit() else 0,
                      message=view.query.get("msg", ""), nonce=nonce)
        return _reply(start_response, "200 OK", html, nonce=nonce)

    def _act(self, environ: dict[str, Any], view: pages.View, path: str,
             start_response: StartResponse) -> Iterable[bytes]:
        if self.read_only:
            return _reply(start_response, "403 Forbidden", b"the dashboard is read-only\n", _TEXT)
        if not same_origin(environ):
            log.warning("dashboard: refused a cross-origin %s (Origin %r, Referer %r, Host %r)",
                        path, environ.get("HTTP_ORIGIN"), environ.get("HTTP_REFERER"),
                        environ.get("HTTP_HOST"))
            return _reply(start_response, "403 Forbidden",
                          b"refused: the request does not come from this dashboard\n", _TEXT)
        size = int(environ.get("CONTENT_LENGTH") or 0)  # checked by _gate
        try:
            raw = environ["wsgi.input"].read(size)
        except (TimeoutError, OSError):
            return _reply(start_response, "408 Request Timeout", b"request body too slow\n", _TEXT)
        form = parse_qs(raw.decode("utf-8", "replace"))
        back, message = self.actions[path](form)
        log.info("dashboard: %s: %s", path, message)
        return _reply(start_response, "303 See Other", b"",
                      location=view.url(back) + "?msg=" + quote(message))

    def _set_change(self, which: str, action: str, form: dict[str, list[str]]) -> tuple[str, str]:
        back = "/" + which
        jids = None if form.get("all") == ["1"] else form.get("jid", [])
        if jids == []:
            return back, "nothing chosen"
        scores: dict[str, float] = {}
        given = form.get("score", [])
        if jids and len(given) == len(jids):  # each button sends its entry's jid and score
            for jid, text in zip(jids, given, strict=True):
                try:
                    score = float(text)
                except ValueError:
                    continue  # not a number: that jid is looked for without it
                if not math.isnan(score):
                    scores[jid] = score
        done, change = sets.act(which, action, jids, settings=self.settings, scores=scores)
        message = f"{done} {change.changed} jobs"
        if change.not_found:
            message += f"; {len(change.not_found)} no longer in the set"
        if change.not_retryable:
            message += f"; {len(change.not_retryable)} records that are not jobs left"
        return back, message

    def _release(self, form: dict[str, list[str]]) -> tuple[str, str]:
        from ..control import drop_dead_records
        from ..store import quarantine
        from ..store.engine import get_engine

        job, keys = form.get("job", [""])[-1], form.get("key", [])
        try:
            parsed = [json.loads(k) for k in keys]
        except json.JSONDecodeError:
            return "/quarantine", "not released: a key is not JSON"
        if not job or not parsed or not all(isinstance(k, list) for k in parsed):
            return "/quarantine", "not released: give a job and keys as JSON arrays"
        released = quarantine.release_returning(get_engine(self.settings), job, parsed)
        drop_dead_records(self.settings, released)  # the key's dead records go with it
        n = len(released)
        return "/quarantine", f"released {n} keys of {job}"


def same_origin(environ: dict[str, Any]) -> bool:
    """Whether a request was sent by a page of this same host (see the module docs)."""
    site = environ.get("HTTP_SEC_FETCH_SITE")
    if site is not None and site != "same-origin":
        return False
    host: str = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME')}:{environ.get('SERVER_PORT')}"
    source: str | None = environ.get("HTTP_ORIGIN") or environ.get("HTTP_REFERER")
    if not source or source == "null":
        return False
    return urlsplit(source).netloc.lower() == host.lower()


_TEXT = "text/plain; charset=utf-8"


def host_name(host: str) -> str:
    """The name of a ``Host`` header value: port dropped, brackets of an IPv6 address
    removed, lowercased, without a trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return _bare(host[1:].split("]", 1)[0])
    if host.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        host = host.split(":", 1)[0]
    return _bare(host)


def _bare(name: str) -> str:
    name = name.strip("[]").rstrip(".")
    try:
        return str(ipaddress.ip_address(name))  # one spelling of each address (::1, not 0::1)
    except ValueError:
        return name


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (``localhost`` or a loopback address)."""
    name = _bare(host.lower())
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class BasicAuth:
    """HTTP basic authentication with one user and password, compared in constant
    time (``hmac.compare_digest``). Refused requests get 401 with its ``challenge``."""

    challenge = 'Basic realm="reconcile", charset="UTF-8"'

    def __init__(self, user: str, password: str) -> None:
        if not user or not password or ":" in user:
            raise ValueError("basic auth needs USER:PASSWORD, a user without ':' and a password")
        self._expected = f"{user}:{password}".encode()

    @classmethod
    def parse(cls, spec: str) -> BasicAuth:
        """From ``"user:password"`` (``ValueError`` saying what is wrong, never echoing it)."""
        user, sep, password = spec.partition(":")
        if not sep:
            raise ValueError("basic auth needs USER:PASSWORD (no ':' found)")
        return cls(user, password)

    def __call__(self, environ: dict[str, Any]) -> bool:
        scheme, _, value = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self._expected)


def _nonce() -> str:
    return secrets.token_urlsafe(16)


def csp(nonce: str = "") -> str:
    """The Content-Security-Policy of a response: nothing loads or runs but the
    page's own style and script, tagged with ``nonce`` (none for other responses)."""
    own = f"'nonce-{nonce}'" if nonce else "'none'"
    return (f"default-src 'none'; style-src {own}; script-src {own}; img-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


SECURITY_HEADERS = (
    ("Cache-Control", "no-store"), ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin"),
)
"""Sent with every response (with :func:`csp`)."""


def _reply(start_response: StartResponse, code: str, body: bytes,
           content_type: str = "text/html; charset=utf-8", nonce: str = "",
           **headers: str) -> list[bytes]:
    extra = [(k.replace("_", "-").title(), v) for k, v in headers.items()]
    start_response(code, [
        ("Content-Type", content_type), ("Content-Length", str(len(body))),
        ("Content-Security-Policy", csp(nonce)), *SECURITY_HEADERS, *extra,
    ])
    return [body]


class _DeadlineReader(io.RawIOBase):
    """A connection's reading side that gives up ``seconds`` after the connection
    opened, however the bytes trickle in: a client that sends nothing, or one byte at a
    time, cannot hold a server thread longer than that."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self._sock = sock
        self._seconds = seconds
        self._deadline = time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"request not received within {self._seconds:g} s")
        self._sock.settimeout(left)
        try:
            return self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(self._seconds)  # what writes get


class _RequestHandler(WSGIRequestHandler):
    """wsgiref's handler with a deadline on reading the request (see
    :class:`_DeadlineReader`), a timeout on writes, and the security headers on the
    error replies it writes itself (a request line or headers it cannot parse)."""

    timeout = READ_TIMEOUT  # StreamRequestHandler applies it to the socket (writes)

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain reader made by setup; the socket stays open
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, float(self.timeout or READ_TIMEOUT)))

    def handle(self) -> None:
        try:
            super().handle()
        except (TimeoutError, ConnectionError) as exc:
            log.info("dashboard: dropped a connection from %s: %s", self.client_address[0], exc)
            self.close_connection = True

    def end_headers(self) -> None:  # only the error replies of http.server pass here
        self.send_header("Content-Security-Policy", csp())
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        log.info("dashboard: %s %s", self.address_string(), format % args)


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """The standard library's WSGI server with a thread per request, so a page waiting
    on an unreachable PostgreSQL does not hold up the others."""

    daemon_threads = True


class _ThreadingWSGIServer6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


def serve(settings: Settings | None = None, host: str = "127.0.0.1", port: int = 8181,
          read_only: bool = False, *, allowed_hosts: Iterable[str] = (), auth: Auth | None = None,
          read_timeout: float = READ_TIMEOUT, max_body: int = MAX_BODY_BYTES) -> WSGIServer:
    """A standalone server for ``reconcile web``. Call ``serve_forever()`` on it;
    ``port=0`` picks a free port. The bound ``host`` is an allowed Host name (unless it
    is a wildcard such as 0.0.0.0, which no browser should send), besides
    ``allowed_hosts``; ``read_timeout`` bounds how long a request may take to arrive
    (and each write); see :class:`Dashboard` for the rest. Refusing a non-loopback
    address without authentication is the CLI's decision, not this function's."""
    names = list(allowed_hosts)
    try:
        wildcard = ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        wildcard = False
    if not wildcard:
        names.append(host)
    handler = type("RequestHandler", (_RequestHandler,), {"timeout": read_timeout})
    app = Dashboard(settings, read_only=read_only, allowed_hosts=names, auth=auth, max_body=max_body)
    server_class = _ThreadingWSGIServer6 if ":" in host else ThreadingWSGIServer
    return make_server(host.strip("[]"), port, app, server_class=server_class, handler_class=handler)
