"""The dashboard as a WSGI application (Sidekiq Web's place in reconcile).

``Dashboard(settings)`` is a WSGI callable: mount it in your web app behind your own
authentication, or run it alone with ``reconcile web`` (:func:`serve`, which binds
127.0.0.1 by default). It has no login of its own, like Sidekiq Web.

Contracts:

* Pages (GET): ``/`` (queues, sets, processes, counters), ``/queue?name=Q``,
  ``/scheduled``, ``/retry``, ``/dead``, ``/quarantine`` and ``/runs`` (PostgreSQL),
  ``/status.json`` (:func:`reconcile.api.status`), ``/metrics`` (the same for
  Prometheus, see :mod:`.metrics`). ``?refresh=N`` reloads a page every N seconds.
* Actions (POST, form-encoded): ``/dead/retry``, ``/dead/delete``,
  ``/scheduled/run``, ``/scheduled/delete``, ``/retry/run``, ``/retry/delete`` (``jid``
  repeated, or ``all=1``; see :mod:`reconcile.sets`), ``/quarantine/release`` (``job``
  and ``key`` as JSON).
  Each answers 303 back to its page with what it did.
* Actions are refused (403) unless the request comes from the dashboard's own origin:
  its ``Origin`` (or, without one, ``Referer``) must name the ``Host`` it was sent
  to, and a ``Sec-Fetch-Site`` header, when sent, must say ``same-origin``. That is
  the cross-site request forgery defence; it needs no session or secret, so it works
  with any number of web processes. ``read_only=True`` refuses every action and
  hides the buttons.
* Every value shown is HTML-escaped. An unreachable Redis or PostgreSQL gives a 503
  page naming it, not a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit
from wsgiref.simple_server import WSGIServer, make_server

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

MAX_FORM_BYTES = 1_000_000
"""Largest action body read (a form of jids)."""

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
    request, so it may be built at import, before the app calls ``reconcile.configure()``."""

    def __init__(self, settings: Settings | None = None, *, read_only: bool = False) -> None:
        self._settings = settings
        self.read_only = read_only
        self.actions: dict[str, Callable[[dict[str, list[str]]], tuple[str, str]]] = {}
        for which, spec in pages.SET_PAGES.items():  # the paths the pages' buttons post to
            self.actions[f"/{which}/{spec.move}"] = functools.partial(self._set_change, which, "move")
            self.actions[f"/{which}/delete"] = functools.partial(self._set_change, which, "delete")
        self.actions["/quarantine/release"] = self._release

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    @property
    def broker(self) -> Broker:
        return get_broker(self.settings)  # cached per settings

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
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
                body = metrics.render(status(self.settings, self.broker))
                return _reply(start_response, "200 OK", body, metrics.CONTENT_TYPE)
            if path in PAGES:
                if method not in ("GET", "HEAD"):
                    return _reply(start_response, "405 Method Not Allowed", b"GET only\n",
                                  allow="GET, HEAD")
                return self._page(view, PAGES[path], start_response)
            if path in self.actions:
                if method != "POST":
                    return _reply(start_response, "405 Method Not Allowed", b"POST only\n",
                                  allow="POST")
                return self._act(environ, view, path, start_response)
            return _reply(start_response, "404 Not Found", b"not found\n")
        except (redis.RedisError, sa.exc.SQLAlchemyError) as exc:
            which = "Redis" if isinstance(exc, redis.RedisError) else "PostgreSQL"
            log.warning("dashboard: %s unavailable: %s", which, exc)
            html = layout("Unavailable", "", self._nav(view), self.settings.namespace,
                          error=f"{which} could not be read: {str(exc).strip()[:300]}")
            return _reply(start_response, "503 Service Unavailable", html)

    def _nav(self, view: pages.View) -> list[tuple[str, str]]:
        return [(label, view.url(href)) for label, href in NAV]

    def _page(self, view: pages.View, page: Page, start_response: StartResponse) -> Iterable[bytes]:
        title, body = page(view)
        refresh = view.query.get("refresh", "")
        html = layout(title, body, self._nav(view), self.settings.namespace,
                      refresh=int(refresh) if refresh.isdigit() else 0,
                      message=view.query.get("msg", ""))
        return _reply(start_response, "200 OK", html)

    def _act(self, environ: dict[str, Any], view: pages.View, path: str,
             start_response: StartResponse) -> Iterable[bytes]:
        if self.read_only:
            return _reply(start_response, "403 Forbidden", b"the dashboard is read-only\n")
        if not same_origin(environ):
            log.warning("dashboard: refused a cross-origin %s (Origin %r, Referer %r, Host %r)",
                        path, environ.get("HTTP_ORIGIN"), environ.get("HTTP_REFERER"),
                        environ.get("HTTP_HOST"))
            return _reply(start_response, "403 Forbidden",
                          b"refused: the request does not come from this dashboard\n")
        try:
            size = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            size = 0
        if size > MAX_FORM_BYTES:
            return _reply(start_response, "413 Content Too Large", b"form too large\n")
        form = parse_qs(environ["wsgi.input"].read(size).decode("utf-8", "replace"))
        back, message = self.actions[path](form)
        log.info("dashboard: %s: %s", path, message)
        return _reply(start_response, "303 See Other", b"",
                      location=view.url(back) + "?msg=" + quote(message))

    def _set_change(self, which: str, action: str, form: dict[str, list[str]]) -> tuple[str, str]:
        back = "/" + which
        jids = None if form.get("all") == ["1"] else form.get("jid", [])
        if jids == []:
            return back, "nothing chosen"
        done, change = sets.act(which, action, jids, settings=self.settings)
        message = f"{done} {change.changed} jobs"
        if change.not_found:
            message += f"; {len(change.not_found)} no longer in the set"
        if change.not_retryable:
            message += f"; {len(change.not_retryable)} records that are not jobs left"
        return back, message

    def _release(self, form: dict[str, list[str]]) -> tuple[str, str]:
        from ..store import quarantine
        from ..store.engine import get_engine

        job, keys = form.get("job", [""])[-1], form.get("key", [])
        try:
            parsed = [json.loads(k) for k in keys]
        except json.JSONDecodeError:
            return "/quarantine", "not released: a key is not JSON"
        if not job or not parsed or not all(isinstance(k, list) for k in parsed):
            return "/quarantine", "not released: give a job and keys as JSON arrays"
        n = quarantine.release(get_engine(self.settings), job, parsed)
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


def _reply(start_response: StartResponse, code: str, body: bytes,
           content_type: str = "text/html; charset=utf-8", **headers: str) -> list[bytes]:
    extra = [(k.replace("_", "-").title(), v) for k, v in headers.items()]
    start_response(code, [
        ("Content-Type", content_type), ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"), ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin"),
        *extra,
    ])
    return [body]


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """The standard library's WSGI server with a thread per request, so a page waiting
    on an unreachable PostgreSQL does not hold up the others."""

    daemon_threads = True


def serve(settings: Settings | None = None, host: str = "127.0.0.1", port: int = 8181,
          read_only: bool = False) -> WSGIServer:
    """A standalone server for ``reconcile web``. Call ``serve_forever()`` on it;
    ``port=0`` picks a free port."""
    return make_server(host, port, Dashboard(settings, read_only=read_only),
                       server_class=ThreadingWSGIServer)
