"""Which keys one partition of a partitioned pass scans, decided when the pass starts.

A ReconciledJob with ``partitions = N`` splits its pending keys by key range into N
schedule rows (names: :mod:`reconcile.scheduler.schedule_rows`), so N passes, on any
schedulers, share the class's work. :func:`key_range` gives partition ``i`` its range
from the bounds stored on partition 0's row (SQL: :mod:`reconcile.store.partitions`):

* **Correct for any key the pass can scan.** Ranges are row-value comparisons in key
  order, the order the keyset scan already requires (key columns NOT NULL and
  sortable), so they work for integer, text, UUID, date, numeric and composite keys
  alike, with the column's collation. Bounds are stored in the key's canonical form
  and turned back into column values for the SQL. Whatever the bounds, the N ranges
  are disjoint and cover every possible key: a pending key is in exactly one.
* **Stable.** Bounds change only when none are stored (a new partitioned class, or
  ``partitions`` changed: the row's spec changed, which drops them) or when every
  partition has completed a pass of the current generation *and* the partitions'
  key counts have drifted apart (the largest more than :data:`REBALANCE_ABOVE` times
  the mean, and more than one page). So in steady state no pass recomputes them, and
  the ranges never move before each has been scanned.
* **Computed once.** The first partition to see that bounds are due takes an advisory
  lock on the primary, computes them from the pending query (on the scan's database,
  the read replica if ``pending_database_url`` is set) and publishes them as the next
  generation; partitions that start meanwhile wait for that lock, then use them.

Neither rule can lose a key: a range that moves between generations leaves a key to
the partition that owns it in the new generation, which scans it on its next pass
(passes are level-triggered), and a stale generation only costs balance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from .schedule_rows import partition_name, partition_names

if TYPE_CHECKING:
    from ..reconciled import ReconciledJob
    from ..store.partitions import PartitionState

REBALANCE_ABOVE = 1.5
"""Bounds are recomputed once the largest partition found this many times the mean."""


@dataclass(frozen=True)
class KeyRange:
    """The keys partition ``index`` of ``count`` scans: after ``lower`` (exclusive; None:
    from the first key) up to ``upper`` (inclusive; None: to the last key), both as
    column values; ``empty`` when the bounds leave it nothing (fewer keys than
    partitions). ``gen`` is the bounds generation it comes from."""

    index: int
    count: int
    gen: int
    lower: tuple[Any, ...] | None
    upper: tuple[Any, ...] | None
    empty: bool = False

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


def needs_bounds(state: PartitionState, count: int, page: int) -> bool:
    """Whether the bounds of ``state`` must be (re)computed for ``count`` partitions:
    none stored, stored for more partitions, or every partition completed the current
    generation with key counts drifted apart (see the module docstring)."""
    bounds = state.bounds
    if bounds is None or len(bounds) > count - 1:
        return True
    scanned = list(state.scanned.values())
    if any(gen != state.gen for gen, _ in scanned):
        return False  # the current ranges are not all scanned yet: they must not move
    found = [keys or 0 for _, keys in scanned]
    mean = sum(found) / len(found)
    return max(found) > max(REBALANCE_ABOVE * mean, page)


def key_range(job_class: type[ReconciledJob], index: int, count: int, primary: Engine,
              scan: Engine) -> KeyRange:
    """The range partition ``index`` of ``count`` of ``job_class`` scans now, computing
    and publishing new bounds first when they are due (:func:`needs_bounds`)."""
    from ..store import partitions

    job = job_class.job_name
    names = partition_names(job, count)
    page = int(job_class.batch_size)
    state = partitions.read_state(primary, job, names)
    if needs_bounds(state, count, page):
        with primary.begin() as conn:
            partitions.lock_bounds(conn, job)  # another partition may be computing them
            state = partitions.read_state(conn, job, names)
            if needs_bounds(state, count, page):
                codec = job_class.key_codec()
                found = partitions.compute_bounds(scan, job_class().pending(), count)
                wire = [codec.wire(k) for k in found]
                if partitions.publish(conn, job, state.gen, wire):
                    state = partitions.PartitionState(wire, state.gen + 1, state.scanned)
    return range_of(job_class, state.bounds or [], state.gen, index, count)


def range_of(job_class: type[ReconciledJob], bounds: list[list[Any]], gen: int, index: int,
             count: int) -> KeyRange:
    """Partition ``index``'s range under ``bounds`` (canonical keys, ascending)."""
    codec = job_class.key_codec()
    bounds = bounds[: count - 1]  # bounds of a larger count: the last range takes the rest
    m = len(bounds)
    if index > m:
        return KeyRange(index, count, gen, None, None, empty=True)
    lower = codec.native(bounds[index - 1]) if index >= 1 else None
    upper = codec.native(bounds[index]) if index < m else None
    return KeyRange(index, count, gen, lower, upper)


def row_name(job_class: type[ReconciledJob], index: int, count: int) -> str:
    """The schedule row of partition ``index`` of ``count`` of ``job_class``."""
    return partition_name(job_class.job_name, index, count)
