"""What a queue-depth autoscaler reads (docs/scaling.md): the due entries of the
scheduled and retry sets, on the Redis server's clock, in ``reconcile status``'s
document and in ``/metrics``."""

from __future__ import annotations

import orjson

from reconcile import api
from reconcile.broker import Broker
from reconcile.config import Settings
from reconcile.web.metrics import render
from tests.jobs_core import Record


def test_status_counts_the_scheduled_and_retry_entries_that_are_due(
    settings: Settings, broker: Broker
) -> None:
    assert Record.perform_in(3600, "later")
    assert Record.perform_in(3600, "due-a")
    assert Record.perform_in(3600, "due-b")
    r, k = broker.redis, broker.keys
    sec, _ = r.time()  # type: ignore[misc]
    for raw in r.zrange(k.schedule, 0, -1):  # type: ignore[union-attr]
        if orjson.loads(raw)["args"][0].startswith("due-"):
            r.zadd(k.schedule, {raw: int(sec) - 5}, xx=True)  # their time came
    r.zadd(k.retry, {b'{"queue":"default","jid":"r1"}': int(sec) - 1,
                     b'{"queue":"default","jid":"r2"}': int(sec) + 3600})
    doc = api.status(broker=broker)
    assert (doc["scheduled"], doc["scheduled_due"]) == (3, 2)
    assert (doc["retry"], doc["retry_due"]) == (2, 1)
    text = render(doc).decode()
    assert 'reconcile_set_due_jobs{set="scheduled"} 2.0\n' in text
    assert 'reconcile_set_due_jobs{set="retry"} 1.0\n' in text
