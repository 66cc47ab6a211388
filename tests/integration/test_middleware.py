"""Client middleware (enqueue: mutate or reject) and server middleware (wrap perform)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from reconcile import Job, client_middleware, server_middleware
from reconcile.broker import Broker
from reconcile.config import Settings
from tests.jobs_core import running_worker, wait_for

Payload = dict[str, Any]


@pytest.fixture(autouse=True)
def clean_chains() -> Iterator[None]:
    """Each test starts with empty chains; whatever was installed before comes back."""
    saved = client_middleware.items, server_middleware.items
    client_middleware.clear()
    server_middleware.clear()
    yield
    client_middleware.clear()
    server_middleware.clear()
    for mw in saved[0]:
        client_middleware.add(mw)
    for smw in saved[1]:
        server_middleware.add(smw)


performed: list[Any] = []


class Work(Job):
    def perform(self, n: int) -> None:
        performed.append(n)


def test_client_middleware_mutates_the_payload(broker: Broker) -> None:
    @client_middleware.add
    def stamp(job_class: type[Job], payload: Payload, call_next: Callable[[Payload], Any]) -> Any:
        assert job_class is Work
        payload["tenant"] = "acme"
        payload["args"] = [payload["args"][0] * 10]
        return call_next(payload)

    jid = Work.perform_async(4)
    [raw] = broker.queue_entries("default")
    job = orjson.loads(raw)
    assert job["jid"] == jid and job["tenant"] == "acme" and job["args"] == [40]


def test_client_middleware_can_reroute_to_another_queue(broker: Broker) -> None:
    @client_middleware.add
    def reroute(job_class: type[Job], payload: Payload, call_next: Callable[[Payload], Any]) -> Any:
        payload["queue"] = "elsewhere"
        return call_next(payload)

    Work.perform_async(1)
    assert broker.queue_entries("default") == []
    [raw] = broker.queue_entries("elsewhere")
    assert raw.startswith(b'{"queue":"elsewhere"')


def test_rejected_enqueue_returns_none_and_writes_nothing(broker: Broker) -> None:
    @client_middleware.add
    def reject_odd(job_class: type[Job], payload: Payload, call_next: Callable[[Payload], Any]) -> Any:
        return None if payload["args"][0] % 2 else call_next(payload)

    assert Work.perform_async(1) is None
    assert list(broker.redis.scan_iter(match=broker.keys.pattern)) == []
    jids = Work.perform_bulk([[n] for n in range(6)])
    assert [j is not None for j in jids] == [True, False] * 3
    assert sorted(orjson.loads(r)["args"][0] for r in broker.queue_entries("default")) == [0, 2, 4]


def test_client_chain_order_first_added_is_outermost(broker: Broker) -> None:
    trace: list[str] = []

    def make(tag: str) -> Callable[..., Any]:
        def mw(job_class: type[Job], payload: Payload, call_next: Callable[[Payload], Any]) -> Any:
            trace.append(f"{tag}>")
            out = call_next(payload)
            trace.append(f"<{tag}")
            return out

        return mw

    client_middleware.add(make("b"))
    client_middleware.prepend(make("a"))
    client_middleware.add(make("c"))
    Work.perform_async(1)
    assert trace == ["a>", "b>", "c>", "<c", "<b", "<a"]


def test_client_middleware_exception_propagates_and_writes_nothing(broker: Broker) -> None:
    @client_middleware.add
    def fail(job_class: type[Job], payload: Payload, call_next: Callable[[Payload], Any]) -> Any:
        raise PermissionError("not allowed")

    with pytest.raises(PermissionError):
        Work.perform_bulk([[1], [2]])
    assert list(broker.redis.scan_iter(match=broker.keys.pattern)) == []


def test_server_middleware_wraps_perform(settings: Settings, broker: Broker) -> None:
    trace: list[Any] = []
    performed.clear()

    @server_middleware.add
    def outer(job: Job, payload: Payload, call_next: Callable[[], None]) -> None:
        trace.append(("outer>", type(job).__name__, job.jid == payload["jid"]))
        call_next()
        trace.append(("<outer", list(performed)))

    @server_middleware.add
    def inner(job: Job, payload: Payload, call_next: Callable[[], None]) -> None:
        trace.append(("inner>", payload["args"]))
        call_next()

    Work.perform_async(5)
    with running_worker(settings):
        wait_for(lambda: broker.counters()["processed"] == 1, what="ack")
    assert trace == [("outer>", "Work", True), ("inner>", [5]), ("<outer", [5])]


def test_server_middleware_can_skip_a_job(settings: Settings, broker: Broker) -> None:
    performed.clear()

    @server_middleware.add
    def skip_negative(job: Job, payload: Payload, call_next: Callable[[], None]) -> None:
        if payload["args"][0] >= 0:
            call_next()

    Work.perform_bulk([[-1], [2]])
    with running_worker(settings):
        wait_for(lambda: broker.counters()["processed"] == 2, what="both acked")
    assert performed == [2]
    assert broker.set_sizes() == {"scheduled": 0, "retry": 0, "dead": 0}, "skipped = acked"


def test_server_middleware_raising_is_a_job_failure(settings: Settings, broker: Broker) -> None:
    performed.clear()

    class Denied(Exception):
        pass

    @server_middleware.add
    def deny(job: Job, payload: Payload, call_next: Callable[[], None]) -> None:
        raise Denied("rate limited")

    jid = Work.perform_async(1)
    with running_worker(settings):
        wait_for(lambda: broker.set_sizes()["retry"] == 1, what="retry scheduled")
    assert performed == []
    [(raw, _)] = broker.set_entries("retry")
    job = orjson.loads(raw)
    assert job["jid"] == jid and job["retry_count"] == 0
    assert job["error_class"].endswith("Denied") and job["error_message"] == "rate limited"
