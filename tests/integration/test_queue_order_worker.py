"""Queue order end to end: a strict worker drains higher queues first; a weighted one
serves them in proportion to their weights."""

from __future__ import annotations

import threading
from typing import ClassVar

from reconcile import Job
from reconcile.broker import Broker
from reconcile.config import Settings
from tests.jobs_core import running_worker, wait_for


class Tagged(Job):
    ran: ClassVar[list[str]] = []
    lock: ClassVar[threading.Lock] = threading.Lock()

    def perform(self, tag: str) -> None:
        with Tagged.lock:
            Tagged.ran.append(tag)


def test_strict_worker_drains_higher_queues_first(settings: Settings, broker: Broker) -> None:
    Tagged.ran.clear()
    Tagged.set(queue="low").perform_bulk([["low"]] * 30)
    Tagged.set(queue="default").perform_bulk([["default"]] * 30)
    Tagged.set(queue="critical").perform_bulk([["critical"]] * 30)
    with running_worker(settings, ["critical", "default", "low"], strict=True, concurrency=1):
        wait_for(lambda: len(Tagged.ran) == 90, what="all jobs")
    assert Tagged.ran == ["critical"] * 30 + ["default"] * 30 + ["low"] * 30


def test_weighted_worker_serves_queues_by_weight(settings: Settings, broker: Broker) -> None:
    Tagged.ran.clear()
    Tagged.set(queue="high").perform_bulk([["high"]] * 600)
    Tagged.set(queue="low").perform_bulk([["low"]] * 600)
    with running_worker(settings, ["high,3", "low,1"], concurrency=1, prefetch=1):
        wait_for(lambda: len(Tagged.ran) >= 400, timeout=15, what="400 jobs")
    share = Tagged.ran[:400].count("high") / 400
    print(f"\nweighted worker (3:1): share of 'high' in the first 400 jobs = {share:.3f}")
    assert 0.6 < share < 0.9, share
