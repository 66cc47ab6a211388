"""SQL of partitioned passes: the key bounds that split a class's pending keys into
ranges, their generations, and which generation each partition scanned.

A class with ``partitions = N`` has N schedule rows (``scheduler/schedule_rows.py``
names them); partition ``i`` scans the keys ``k`` with ``bounds[i-1] < k <= bounds[i]``
in key order (the row-value comparison of the keyset scan, so the same ORDER BY and
collation), with no lower bound for partition 0 and no upper bound for the last one.
Whatever the bounds, the ranges are disjoint and cover every key: each pending key is in
exactly one partition. A bounds list shorter than N-1 (fewer pending keys than
partitions) leaves the partitions after it empty.

Bounds are computed from the pending query (:func:`compute_bounds`: the keys at the
1/N, 2/N, ... quantiles of ``row_number() OVER (ORDER BY key)``) and stored, with a
generation number, on the row of partition 0 (:func:`publish`, a compare-and-set on
the generation). A partition's pass reads them when it starts and records, when it
completes, the generation it scanned and how many keys it found (:func:`mark_scanned`).
Bounds are recomputed only when none are stored (a new class, or the partition count
changed) or when every partition has completed a pass of the current generation and
the key counts have drifted apart (``reconcile/scheduler/partitioning.py`` decides),
so within one generation every key's range is scanned before the ranges move.

The computation reads every pending key once (in the server; no key is sent but the
N-1 bounds); schedulers serialise it with an advisory lock (:func:`bounds_lock`), so N
partitions starting together compute the bounds once, not N times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Select

from ._tx import Bind, transaction
from .pending import key_columns, lock_id
from .tables import schedules as s


@dataclass(frozen=True)
class PartitionState:
    """What the rows of one partitioned class say: the bounds in force (canonical key
    forms, None when none are stored), their generation, and per partition row the
    generation and key count of its last completed pass (None: never completed)."""

    bounds: list[list[Any]] | None
    gen: int
    scanned: dict[str, tuple[int | None, int | None]]


def read_state(bind: Bind, job: str, names: Sequence[str]) -> PartitionState:
    """The partition state of ``job``, whose partition rows are ``names`` (partition
    0's row, named ``job``, holds the bounds). A row that does not exist yet reads as
    never scanned."""
    with transaction(bind) as conn:
        rows = conn.execute(
            sa.select(s.c.name, s.c.bounds, s.c.bounds_gen, s.c.scanned_gen, s.c.scanned_keys)
            .where(s.c.name.in_(sorted({job, *names})))
        ).all()
    by_name = {r.name: r for r in rows}
    head = by_name.get(job)
    scanned = {n: ((by_name[n].scanned_gen, by_name[n].scanned_keys) if n in by_name else (None, None))
               for n in names}
    if head is None:
        return PartitionState(None, 0, scanned)
    return PartitionState(head.bounds, int(head.bounds_gen), scanned)


def bounds_lock(job: str) -> int:
    """Advisory-lock id under which bounds of ``job`` are computed (not a key's lock:
    the name is hashed with a suffix no job name has in the key-lock ids)."""
    return lock_id(job + "#bounds", [])


def lock_bounds(conn: Connection, job: str) -> None:
    """Wait for, and take, the transaction-scoped bounds lock of ``job`` on ``conn``."""
    locked = sa.func.pg_advisory_xact_lock(sa.cast(bounds_lock(job), sa.BigInteger))
    conn.execute(sa.select(locked))




def compute_bounds(engine: Engine, stmt: Select[Any], n: int) -> list[tuple[Any, ...]]:
    """The keys of ``stmt`` at which its key order splits into ``n`` ranges of nearly
    equal size: at most ``n - 1`` keys, ascending, each the last key of its range
    (fewer when ``stmt`` has fewer than ``n`` keys; none when it is empty).

    One statement, in the server: ``row_number()`` and ``count(*)`` over the key order,
    keeping the row where ``floor((rn - 1) * n / total)`` (the range of row rn) differs
    from that of row rn + 1."""
    width = key_columns(stmt)
    sub = stmt.subquery("pending")
    cols = list(sub.c)
    rn = sa.func.row_number().over(order_by=cols).label("reconcile_rn")
    total = sa.func.count().over().label("reconcile_total")
    numbered = sa.select(*cols, rn, total).subquery("numbered")
    ncols = list(numbered.c)
    keys, r, t = ncols[:width], ncols[width], ncols[width + 1]
    q = (
        sa.select(*keys)
        .where(r < t, ((r - 1) * n) // t != (r * n) // t)
        .order_by(r)
    )
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(q)]


def publish(conn: Connection, job: str, gen: int, bounds: list[list[Any]]) -> bool:
    """Store ``bounds`` as generation ``gen + 1`` on ``job``'s row if its generation is
    still ``gen`` (compare-and-set); False if another scheduler published first or the
    row does not exist."""
    result = conn.execute(
        sa.update(s)
        .where(s.c.name == job, s.c.bounds_gen == gen)
        .values(bounds=bounds, bounds_gen=gen + 1)
    )
    return result.rowcount > 0


def mark_scanned(bind: Bind, name: str, gen: int, keys: int) -> None:
    """Record that partition row ``name`` completed a pass of bounds generation ``gen``
    that found ``keys`` keys in its range (deferred ones included)."""
    with transaction(bind) as conn:
        conn.execute(sa.update(s).where(s.c.name == name).values(scanned_gen=gen, scanned_keys=keys))
