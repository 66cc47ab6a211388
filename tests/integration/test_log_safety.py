"""Log hygiene: job-derived text cannot forge log lines, and shutdown logs what happened.

Text from jobs (exception messages, class names and jids read from payloads) is
escaped by ``reconcile.logs.safe`` where the engine logs it, so one event is one line.
A worker whose push-back at shutdown fails (Redis went away) says so, and says that
the leases expire and the reaper returns the jobs, instead of claiming success.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest
import redis

from reconcile import Job
from reconcile.broker import Broker, SettleKind
from reconcile.config import Settings, use_settings
from reconcile.logs import safe
from reconcile.worker import Worker
from reconcile.worker.executor import Executor
from reconcile.worker.queues import parse_queue
from tests.jobs_core import wait_for

FORGED = "boom\nERROR reconcile.worker forged line \x1b[2J\u2028"


class Forger(Job):
    """Fails with a message that would start a log line of its own."""

    retry = 2

    def perform(self, n: int) -> None:
        raise ValueError(FORGED)


class Stuck(Job):
    """Blocks until the test opens ``gate``."""

    gate: ClassVar[threading.Event] = threading.Event()
    running: ClassVar[threading.Semaphore] = threading.Semaphore(0)

    def perform(self, n: int) -> None:
        Stuck.running.release()
        Stuck.gate.wait(20)


def one_line(record: logging.LogRecord) -> str:
    text = logging.Formatter("%(levelname)s %(name)s %(message)s").format(record)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text and "\u2028" not in text, text
    return text


def test_safe_escapes_control_characters_and_keeps_the_rest() -> None:
    assert safe("plain text, ünïcode and \\ backslash") == "plain text, ünïcode and \\ backslash"
    assert safe("a\nb\r\tc\x1b[31m\x7f\x9b\u2028\ud800") == "a\\nb\\r\\tc\\x1b[31m\\x7f\\x9b\\u2028\\ud800"
    assert safe(ValueError("x\ny")) == "x\\ny"
    assert safe(None) == "None"


def test_a_failing_jobs_message_is_one_log_line(
    settings: Settings, broker: Broker, caplog: pytest.LogCaptureFixture,
) -> None:
    Forger.perform_async(1)
    [delivery] = broker.exchange("test-proc", ["default"], 1)
    with caplog.at_level(logging.INFO, logger="reconcile"):
        op = Executor(settings, broker).run(delivery)
    assert op.kind is SettleKind.RETRY
    [record] = [r for r in caplog.records if r.name.startswith("reconcile")]
    text = one_line(record)
    assert "boom\\nERROR reconcile.worker forged line \\x1b[2J\\u2028" in text
    assert "jid=" in text and Forger.job_name in text


def test_a_payload_with_a_forged_class_and_jid_is_one_log_line(
    settings: Settings, broker: Broker, caplog: pytest.LogCaptureFixture,
) -> None:
    from reconcile.broker import Delivery

    raw = b'{"queue":"default","jid":"j\\nERROR forged","class":"no.Such\\nERROR x","args":[]}'
    with caplog.at_level(logging.INFO, logger="reconcile"):
        op = Executor(settings, broker).run(Delivery(b"1|default", "default", raw))
    assert op.kind is SettleKind.DEAD
    [record] = [r for r in caplog.records if r.name.startswith("reconcile")]
    assert "no.Such\\nERROR x" in one_line(record)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own, which the test may kill."""
    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        wait_for(lambda: _pings(client), what="private redis-server up")
        yield url, proc
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_a_failed_push_back_at_shutdown_is_logged_as_a_failure(
    settings: Settings, private_redis: tuple[str, subprocess.Popen[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, server = private_redis
    s = settings.with_overrides(redis_url=url, concurrency=1, prefetch=1)
    use_settings(s)
    Stuck.gate.clear()
    Stuck.perform_bulk([[n] for n in range(3)])
    worker = Worker(s, [parse_queue("default")])
    worker.start()
    try:
        assert Stuck.running.acquire(timeout=5)
        # two leased (capacity 2), one of them running: the other waits in the buffer
        wait_for(lambda: worker.broker.leased_count(worker.proc_id) == 2, what="one job buffered")
        server.kill()  # Redis goes away: nothing can be pushed back
        server.wait(5)
        with caplog.at_level(logging.INFO, logger="reconcile.worker"):
            started = time.monotonic()
            pushed = worker.stop(0.2)
        print(f"\nstop() with Redis gone took {time.monotonic() - started:.1f}s")
    finally:
        Stuck.gate.set()
        use_settings(settings)
    assert pushed == 0, "nothing reached Redis"
    # the start-up banner is one multi-line record by design (a block in the text
    # format, one object in json); it carries no job-derived text
    messages = [one_line(r) for r in caplog.records if r.name != "reconcile.banner"]
    failures = [m for m in messages if m.startswith("ERROR") and "could not push its jobs back" in m]
    assert len(failures) == 1, messages
    assert "lease expires" in failures[0] and "reaper returns them" in failures[0]
    assert not any("pushed back to their queues" in m for m in messages), messages
    assert any("stopped (0 jobs pushed back)" in m for m in messages), messages
