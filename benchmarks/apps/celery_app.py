"""celery tasks on the benchmark's Redis database (results off, no events)."""

from __future__ import annotations

from celery import Celery

from .. import probe
from ..common import DBS, url
from ..systems.celery_sys import PREFETCH_MULTIPLIER

app = Celery("bench", broker=url(DBS["celery"]))
app.conf.update(
    task_ignore_result=True,
    task_default_queue="default",
    worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop(i: int) -> None:
    probe.hit()


@app.task(name="bench.lat")
def lat(t0: float) -> None:
    probe.latency(t0)
