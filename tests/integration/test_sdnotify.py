"""systemd's notify protocol, against a real AF_UNIX datagram socket standing in for
systemd: a worker and a scheduler send READY=1 once they serve, then WATCHDOG=1 within
each half watchdog period, and STOPPING=1 as they stop; a process whose liveness check
fails stops feeding the watchdog."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconcile.config import Settings
from reconcile.observe import sdnotify

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify.sock"))
    s.settimeout(30)
    yield s
    s.close()


def messages(s: socket.socket, until: str, limit: int = 50) -> list[str]:
    """Datagrams received until one equals ``until`` (included)."""
    got: list[str] = []
    for _ in range(limit):
        got.append(s.recv(4096).decode())
        if got[-1] == until:
            return got
    raise AssertionError(f"{until!r} never came: {got}")


@pytest.mark.parametrize("command", ["worker", "scheduler"])
def test_a_process_under_systemd_says_ready_then_feeds_the_watchdog_then_stopping(
    command: str, pg_settings: Settings, engine: object, notify_socket: socket.socket
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": notify_socket.getsockname(),
           "WATCHDOG_USEC": "400000", "RECONCILE_REDIS_URL": pg_settings.redis_url,
           "RECONCILE_DATABASE_URL": pg_settings.database_url,
           "RECONCILE_NAMESPACE": pg_settings.namespace}
    args = ["-q", "sdnotify"] if command == "worker" else []
    p = subprocess.Popen([sys.executable, "-m", "reconcile", command, "--app", "tests.jobs_core", *args],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = time.monotonic()
        assert messages(notify_socket, "READY=1") == ["READY=1"]
        ready_at = time.monotonic()
        # two pings, each within a watchdog period (0.4 s) of the one before
        for _ in range(2):
            assert notify_socket.recv(4096) == b"WATCHDOG=1"
            assert time.monotonic() - ready_at < 0.4 + 0.3, "a ping came later than the period"
            ready_at = time.monotonic()
        print(f"{command}: READY=1 {ready_at - started:.2f}s after start")
    finally:
        p.send_signal(signal.SIGTERM)
    assert messages(notify_socket, "STOPPING=1")[-1] == "STOPPING=1"
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err


def test_the_watchdog_is_fed_only_while_the_process_is_live(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.getsockname())
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    live = threading.Event()
    live.set()
    notifier = sdnotify.Notifier(live.is_set)
    notifier.start()
    try:
        assert notify_socket.recv(4096) == b"READY=1"
        assert notify_socket.recv(4096) == b"WATCHDOG=1"
        live.clear()  # a dead thread, a stuck loop: the check fails
        time.sleep(0.1)  # a ping already decided may still arrive
        notify_socket.settimeout(0.01)
        with pytest.raises(TimeoutError):
            while True:
                notify_socket.recv(4096)
        notify_socket.settimeout(0.5)
        with pytest.raises(TimeoutError):  # five periods without a ping: systemd restarts it
            notify_socket.recv(4096)
    finally:
        notifier.stop()


def test_outside_systemd_nothing_is_sent_and_a_watchdog_for_another_pid_is_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("WATCHDOG_USEC", "5000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_seconds() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_seconds() == 5.0
