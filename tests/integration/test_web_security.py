"""The dashboard's defences: Host allowlist (DNS rebinding), authentication, the
security headers of every response, and the standalone server's limits on slow or
large requests. WSGI calls go through ``tests.web_client.call``; the server is a real
one on a free port."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from reconcile.broker import Broker
from reconcile.cli import main
from reconcile.config import Settings
from reconcile.web import Dashboard, serve
from reconcile.web.app import BasicAuth, host_name
from reconcile.web.metrics import render
from tests.web_client import add_dead, call, same_site

SECURITY = {
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin", "Cache-Control": "no-store",
}


def assert_secured(headers: dict[str, str]) -> None:
    for name, value in SECURITY.items():
        assert headers.get(name) == value, name
    policy = headers["Content-Security-Policy"]
    assert policy.startswith("default-src 'none';") and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy


# -- 1. Host allowlist -------------------------------------------------------------------

@pytest.mark.parametrize("host, name", [
    ("localhost:8181", "localhost"), ("LocalHost.", "localhost"), ("[::1]:80", "::1"),
    ("[0:0::1]", "::1"), ("127.0.0.1", "127.0.0.1"), ("evil.example:8181", "evil.example"),
])
def test_host_names_ignore_the_port_and_ipv6_brackets(host: str, name: str) -> None:
    assert host_name(host) == name


@pytest.mark.parametrize("host", ["localhost:8181", "127.0.0.1:9", "[::1]:8181", "localhost"])
def test_loopback_names_are_allowed_by_default(settings: Settings, host: str) -> None:
    assert call(Dashboard(settings), "/status.json", HOST=host)[0] == 200


def test_a_rebound_name_is_refused_for_reads_and_actions(settings: Settings, broker: Broker) -> None:
    add_dead(broker, "rebind")
    app = Dashboard(settings)
    code, headers, body = call(app, "/status.json", HOST="evil.example:8181")
    assert code == 400 and "not an allowed name" in body and headers["Content-Type"].startswith("text/plain")
    assert_secured(headers)
    # the page's own origin and the Host agree: only the allowlist stops it
    code, _, _ = call(app, "/dead/delete", "POST", {"all": "1"}, HOST="evil.example:8181",
                      ORIGIN="http://evil.example:8181")
    assert code == 400 and broker.set_sizes()["dead"] == 1, "nothing deleted"


def test_allowed_hosts_add_names_and_star_allows_any(settings: Settings) -> None:
    assert call(Dashboard(settings, allowed_hosts=["jobs.example"]), "/status.json",
                HOST="JOBS.example:443")[0] == 200
    assert call(Dashboard(settings, allowed_hosts=["jobs.example"]), "/status.json",
                HOST="other.example")[0] == 400
    assert call(Dashboard(settings, allowed_hosts=["*"]), "/status.json", HOST="any.example")[0] == 200


def test_a_dashboard_built_without_settings_for_mounting_allows_loopback_only(settings: Settings) -> None:
    from reconcile.config import use_settings

    use_settings(settings)
    app = Dashboard()
    assert call(app, "/status.json", HOST="localhost")[0] == 200
    assert call(app, "/status.json", HOST="jobs.example")[0] == 400


# -- 2. authentication -------------------------------------------------------------------

def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_challenges_and_lets_the_right_login_in(settings: Settings) -> None:
    app = Dashboard(settings, auth=BasicAuth.parse("ops:s3cret:with-colon"))
    for auth in (None, basic("ops", "wrong"), basic("other", "s3cret:with-colon"), "Basic !!!", "Bearer x"):
        extra = {"AUTHORIZATION": auth} if auth else {}
        code, headers, _ = call(app, "/status.json", **extra)
        assert code == 401 and headers["Www-Authenticate"].startswith('Basic realm="reconcile"')
        assert_secured(headers)
    assert call(app, "/status.json", AUTHORIZATION=basic("ops", "s3cret:with-colon"))[0] == 200


def test_an_auth_hook_guards_a_mounted_dashboard(settings: Settings, broker: Broker) -> None:
    add_dead(broker, "hook")
    seen: list[str] = []

    def staff(environ: dict[str, Any]) -> bool:
        seen.append(environ["PATH_INFO"])
        return environ.get("HTTP_X_STAFF") == "yes"

    app = Dashboard(settings, auth=staff)
    code, headers, _ = call(app, "/dead")
    assert code == 403 and "Www-Authenticate" not in headers
    assert call(app, "/dead/delete", "POST", {"all": "1"}, **same_site())[0] == 403
    assert broker.set_sizes()["dead"] == 1
    assert call(app, "/dead", X_STAFF="yes")[0] == 200
    assert seen == ["/dead", "/dead/delete", "/dead"]


def web_cli(settings: Settings, *args: str, **env: str) -> Any:
    return CliRunner().invoke(main, ["web", "--redis-url", settings.redis_url, *args], env=env)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "jobs.example", "::"])
def test_web_refuses_a_network_address_without_a_login(settings: Settings, host: str) -> None:
    result = web_cli(settings, "--host", host, "--port", "0")
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert f"--host {host} is not a loopback address" in line and "--basic-auth" in line
    assert "--insecure" in line and "Traceback" not in result.output


def test_web_rejects_a_malformed_basic_auth_without_echoing_it(settings: Settings) -> None:
    result = web_cli(settings, "--host", "0.0.0.0", RECONCILE_WEB_BASIC_AUTH="no-colon-secret")
    assert result.exit_code == 2 and "USER:PASSWORD" in result.output
    assert "no-colon-secret" not in result.output


def test_web_starts_on_a_network_address_with_a_login_from_the_environment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconcile.web import app as web_app

    started: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fake_serve(*args: Any, **kwargs: Any) -> Any:
        started.update(kwargs, host=args[1])
        raise Stop

    monkeypatch.setattr(web_app, "serve", fake_serve)
    result = web_cli(settings, "--host", "0.0.0.0", RECONCILE_WEB_BASIC_AUTH="ops:pw")
    assert isinstance(result.exception, Stop), result.output
    assert started["host"] == "0.0.0.0" and started["auth"]({"HTTP_AUTHORIZATION": basic("ops", "pw")})
    result = web_cli(settings, "--host", "0.0.0.0", "--insecure", "--allowed-host", "jobs.example")
    assert isinstance(result.exception, Stop) and started["auth"] is None
    assert started["allowed_hosts"] == ("jobs.example",)


# -- 3. headers on every response --------------------------------------------------------

def test_every_kind_of_response_carries_the_security_headers(settings: Settings) -> None:
    def broken(environ: dict[str, Any]) -> bool:
        raise RuntimeError("a bug in the hook")

    app = Dashboard(settings)
    responses = {
        200: call(app, "/"), 303: call(app, "/dead/retry", "POST", {"jid": "x"}, **same_site()),
        400: call(app, "/", HOST="evil.example"),
        401: call(Dashboard(settings, auth=BasicAuth("a", "b")), "/"),
        403: call(app, "/dead/retry", "POST", {"jid": "x"}),
        404: call(app, "/nope"), 405: call(app, "/dead/retry"),
        413: call(app, "/dead/retry", "POST", {"jid": "x" * 70_000}, **same_site()),
        500: call(Dashboard(settings, auth=broken), "/"),
        503: call(Dashboard(settings.with_overrides(redis_url="redis://127.0.0.1:1/0")), "/"),
        "json": call(app, "/status.json"), "metrics": call(app, "/metrics"),
    }
    for kind, (code, headers, _) in responses.items():
        assert code == kind or isinstance(kind, str), (kind, code)
        assert_secured(headers)
    assert "a bug in the hook" not in responses[500][2] and "Traceback" not in responses[500][2]


def test_pages_run_no_script_or_style_but_their_own_nonce_tagged_ones(settings: Settings) -> None:
    app = Dashboard(settings)
    (_, first, page), (_, second, _) = call(app, "/dead"), call(app, "/dead")
    nonce = first["Content-Security-Policy"].split("'nonce-", 1)[1].split("'", 1)[0]
    assert nonce != second["Content-Security-Policy"].split("'nonce-", 1)[1].split("'", 1)[0]
    assert f"script-src 'nonce-{nonce}'" in first["Content-Security-Policy"]
    assert page.count(f'nonce="{nonce}"') == 2 and page.count("<script") == page.count("<style") == 1
    assert "onsubmit=" not in page and "style=" not in page, "no inline handler or style attribute"
    assert 'data-confirm="Delete every job of this set?"' in page


# -- 4. the standalone server's limits ---------------------------------------------------

@pytest.fixture
def server(settings: Settings) -> Iterator[Any]:
    srv = serve(settings, "127.0.0.1", 0, read_timeout=0.5, max_body=1024)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def closed_within(sock: socket.socket, seconds: float) -> tuple[float, bytes]:
    """How long until the server ends the connection, and what it sent first."""
    start = time.monotonic()
    sock.settimeout(seconds)
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return time.monotonic() - start, got


def test_a_silent_client_is_dropped_after_the_read_timeout(server: Any) -> None:
    with socket.create_connection(("127.0.0.1", server.server_port)) as sock:
        took, got = closed_within(sock, 5)
    assert took < 3 and got == b""


def test_a_client_dribbling_its_headers_is_dropped_at_the_deadline(server: Any) -> None:
    with socket.create_connection(("127.0.0.1", server.server_port)) as sock:
        start = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\n")
        try:
            while time.monotonic() - start < 5:
                sock.sendall(b"X-Slow: 1\r\n")  # each byte in time; the whole request never
                time.sleep(0.1)
        except OSError:
            pass  # the server closed: sending fails
        took = time.monotonic() - start
    assert took < 3, f"held {took:.1f} s"


def test_a_body_over_the_limit_gets_413_unread(server: Any) -> None:
    with socket.create_connection(("127.0.0.1", server.server_port)) as sock:
        sock.sendall(b"POST /dead/retry HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n\r\n")
        took, got = closed_within(sock, 5)
    head = got.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.0 413") and "Content-Security-Policy: default-src 'none'" in head
    assert took < 1, "answered at once, without waiting for the body"


def test_the_servers_own_error_replies_carry_the_headers(server: Any) -> None:
    with socket.create_connection(("127.0.0.1", server.server_port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 101 + b"\r\n")  # over http.server's 100
        _, got = closed_within(sock, 5)
    head = got.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.0 431") and "X-Frame-Options: DENY" in head and "nosniff" in head


def test_the_bound_address_is_an_allowed_host(server: Any) -> None:
    with socket.create_connection(("127.0.0.1", server.server_port)) as sock:
        sock.sendall(b"GET /status.json HTTP/1.0\r\nHost: 127.0.0.1:1\r\n\r\n")
        _, got = closed_within(sock, 5)
    assert got.startswith(b"HTTP/1.0 200")


# -- 7. metrics --------------------------------------------------------------------------

def test_metrics_print_counters_exactly_and_floats_at_full_precision() -> None:
    # prometheus_client writes float64 values (what Prometheus stores) in a form that
    # reads back exactly: 123456789 as 1.23456789e+08, never a rounded 1.23457e+08
    doc = {"queues": [{"name": "q", "size": 123456789, "latency": 1234567.891}],
           "scheduled": 0, "retry": 0, "dead": 10**12, "scheduled_due": 0, "retry_due": 0,
           "in_flight": 0, "processes": [], "schedulers": [], "schedulers_alive": 0,
           "counters": {"processed": 123456789, "failed": 2**53}}
    lines = dict(line.rsplit(" ", 1) for line in render(doc).decode().splitlines()
                 if not line.startswith("#"))
    assert float(lines['reconcile_namespace_jobs_total{outcome="processed"}']) == 123456789
    assert float(lines['reconcile_namespace_jobs_total{outcome="failed"}']) == 2**53
    assert float(lines['reconcile_queue_size{queue="q"}']) == 123456789
    assert float(lines['reconcile_queue_latency_seconds{queue="q"}']) == 1234567.891
    assert float(lines['reconcile_set_jobs{set="dead"}']) == 10**12
