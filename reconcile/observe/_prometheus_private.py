"""Every use of a ``prometheus_client`` internal, and what it saves.

:func:`observe_many` adds a batch of observations to a histogram child with one
increment per bucket touched and one on the sum, instead of ``observe()`` per value
(two increments each; in multiprocess mode each increment is a write to a
memory-mapped file under the library's one global lock). It reads the child's
``_upper_bounds``, ``_buckets`` and ``_sum`` (stable since prometheus_client 0.4);
when a version lacks them it falls back to ``observe()`` per value, the reference.
``tests/unit/test_prometheus_private.py`` checks that both give the same exposition.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any


def observe_many(child: Any, values: Sequence[float]) -> None:
    """``child.observe(v)`` for each of ``values``, in one increment per bucket touched."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for v in values:
            child.observe(v)
        return
    hits = [0] * len(bounds)
    last = len(bounds) - 1
    for v in values:
        # observe() counts v in the first bucket whose bound is >= v (the last is +Inf)
        hits[min(bisect_left(bounds, v), last)] += 1
    for i, n in enumerate(hits):
        if n:
            buckets[i].inc(n)
    total.inc(sum(values))
