"""The HTTP server on ``metrics_port``: ``/metrics``, ``/livez``, ``/readyz``.

A threading WSGI server (the standard library's, as ``prometheus_client``'s own) on a
daemon thread:

* ``GET /metrics`` (and ``/``): the registry in Prometheus's text format, or
  OpenMetrics when the scraper asks (``prometheus_client.make_wsgi_app``; gzip when
  accepted). ``before_scrape`` runs first (a worker refreshes its gauges);
* ``GET /livez``, ``GET /readyz``: 200 with ``{"status": "ok", ...}``, or 503 with
  ``{"status": "fail", "reasons": [...]}`` (:mod:`.health`);
* anything else: 404.

Several processes, one port (multiprocess mode): the first process to bind serves the
files of every process of the directory; the others, finding the port taken, try to
bind again every :data:`TAKEOVER_SECONDS`, so one of them takes over when the server
process stops. Outside multiprocess mode a taken port is an error (:meth:`MetricsServer.start`
raises ``OSError``), since two servers would each show one process as if it were all.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from .health import Health

log = logging.getLogger("reconcile.metrics")

TAKEOVER_SECONDS = 5.0
"""Multiprocess mode: how often a process whose port was taken tries to bind it."""

Start = Callable[[Any, Callable[..., Any]], Iterable[bytes]]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung scraper does not keep the process from exiting


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every 15 s per scraper is not worth a log line


class MetricsServer:
    """Serves ``registry`` and the health checks ``health(probe)`` on ``host:port``."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry,
        health: Callable[[str], Health], *, before_scrape: Callable[[], None] | None = None,
        takeover: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.health = health
        self.before_scrape = before_scrape
        self.takeover = takeover
        self._metrics = make_wsgi_app(registry)
        self._httpd: WSGIServer | None = None
        self._stop = threading.Event()
        self._retry: threading.Thread | None = None

    @property
    def serving(self) -> bool:
        """Whether this process holds the port now."""
        return self._httpd is not None

    @property
    def bound_port(self) -> int:
        """The port served (``port`` 0 in tests: the one the system picked)."""
        return int(self._httpd.server_address[1]) if self._httpd is not None else self.port

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path in ("/livez", "/readyz"):
            probe = "live" if path == "/livez" else "ready"
            try:
                result = self.health(probe)
            except Exception as exc:  # a check that fails is a failed check
                log.exception("health check %s failed", probe)
                result = Health(False, [f"the check itself failed: {type(exc).__name__}: {exc}"])
            body = json.dumps(result.body(probe)).encode()
            start_response("200 OK" if result.ok else "503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store")])
            return [body]
        if path in ("/", "/metrics"):
            if self.before_scrape is not None:
                try:
                    self.before_scrape()
                except Exception:
                    log.exception("refreshing gauges before a scrape failed")
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        body = b"not found: try /metrics, /livez or /readyz\n"
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    def _bind(self) -> WSGIServer:
        cls = _Server6 if ":" in self.host else _Server
        return make_server(self.host, self.port, self.app, cls, handler_class=_Quiet)

    def _serve(self, httpd: WSGIServer) -> None:
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, name="reconcile-metrics", daemon=True).start()
        log.info("serving /metrics, /livez and /readyz on http://%s:%d", self.host, self.bound_port)

    def start(self) -> None:
        """Bind and serve. A taken port raises ``OSError`` unless ``takeover``: then a
        thread tries again every :data:`TAKEOVER_SECONDS` until :meth:`stop`."""
        try:
            self._serve(self._bind())
        except OSError as exc:
            if not (self.takeover and exc.errno == errno.EADDRINUSE):
                raise
            log.info("metrics port %d is served by another process of this host "
                     "(PROMETHEUS_MULTIPROC_DIR: it serves this process's metrics too); "
                     "this one takes it over if that process stops", self.port)
            self._retry = threading.Thread(target=self._take_over, name="reconcile-metrics-takeover",
                                           daemon=True)
            self._retry.start()

    def _take_over(self) -> None:
        while not self._stop.wait(TAKEOVER_SECONDS):
            try:
                httpd = self._bind()
            except OSError:
                continue
            if self._stop.is_set():
                httpd.server_close()
                return
            self._serve(httpd)
            return

    def stop(self) -> None:
        self._stop.set()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
