"""The prometheus_client internal reconcile uses (reconcile/observe/_prometheus_private.py):
a batch observed at once gives the exposition ``observe()`` per value gives; and the
worker's buffered job counts (JobMetrics) add up to what was recorded."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from reconcile.observe import _prometheus_private as private
from reconcile.observe import metrics

BUCKETS = (0.001, 0.01, 0.1, 1.0, float("inf"))
VALUES = [0.0, 0.0005, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 1e9, 0.001]


def exposition(observe: str) -> str:
    registry = CollectorRegistry()
    h = Histogram("h_seconds", "test", ["class"], buckets=BUCKETS, registry=registry)
    child = h.labels("a")
    if observe == "each":
        for v in VALUES:
            child.observe(v)
    else:
        private.observe_many(child, VALUES)
    return "\n".join(x for x in generate_latest(registry).decode().splitlines() if "_created" not in x)


def test_a_batch_gives_the_exposition_of_one_observe_per_value() -> None:
    assert private.observe_many.__module__.endswith("_prometheus_private")
    assert exposition("batch") == exposition("each")
    assert 'h_seconds_bucket{class="a",le="0.001"} 4.0' in exposition("batch")  # 0, 0.0005, 0.001 x2


def test_without_the_internals_it_falls_back_to_observe() -> None:
    seen: list[float] = []

    class Plain:
        def observe(self, v: float) -> None:
            seen.append(v)

    private.observe_many(Plain(), VALUES)
    assert seen == VALUES


def test_buffered_job_counts_from_many_threads_add_up_exactly() -> None:
    m = metrics.JobMetrics()
    per_thread, threads = 3000, 8  # past FLUSH_AT: recording threads flush too

    def work(i: int) -> None:
        for j in range(per_thread):
            m.record("unit.Buffered", f"q{i % 2}", "done" if j % 3 else "retry", 0.002)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    m.flush()
    total = sum(metrics.JOBS.labels("unit.Buffered", q, o)._value.get()
                for q in ("q0", "q1") for o in ("done", "retry"))
    assert total == per_thread * threads
    assert metrics.JOBS.labels("unit.Buffered", "q0", "retry")._value.get() == 1000 * threads // 2
    count = sum(b.get() for b in metrics.JOB_DURATION.labels("unit.Buffered")._buckets)
    assert count == per_thread * threads
