"""The psycopg internals reconcile uses: libpq's ``PQexec`` and errors made from its result.

``psycopg.pq`` is psycopg's low-level libpq wrapper, below its documented
connection and cursor API, whose details may change between releases; every use of it
goes through this module, and ``tests/integration/test_private_apis.py`` checks the attributes and
behaviour relied on here. Tested on psycopg 3.1.20 and 3.3.9 (the range
``pyproject.toml`` states). With ``fast_paths = false`` a delivery calls none of it
(the pool's checkout ping still does: it is not a fast path but the way to ping
without a transaction).

Figures: see :func:`exec_simple`.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import pq

IDLE = pq.TransactionStatus.IDLE
IN_TRANSACTION = (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)


def exec_simple(conn: psycopg.Connection[Any], statement: bytes, encoding: str) -> pq.abc.PGresult:
    """Send ``statement`` (SQL statements, no parameters) on ``conn`` as ONE simple
    query with libpq's blocking ``PQexec`` (``pgconn.exec_``, which releases the GIL
    while it waits) and return the result of its last statement. PostgreSQL stops at
    the first error, raised as psycopg raises it (a lost connection:
    ``OperationalError``). psycopg reads the transaction state from libpq, so its view
    of the connection stays right.

    What it saves over ``cursor.execute`` of the same string: the cursor's query
    conversion, its prepared-statement bookkeeping and result sets: ``SELECT 1`` on a
    warm local connection took 65 us against 98 us with ``cursor.execute`` and
    ``fetchone`` (best of 5 ``timeit`` runs, psycopg 3.3.9 binary, on a loaded 2-core
    machine; ``benchmarks/private_apis.py``), on each of the two simple queries of
    every delivery. It is also the one way to send several statements in one round trip
    that psycopg does not wrap in its implicit transaction.
    """
    pgconn = conn.pgconn
    result = pgconn.exec_(statement)
    if result.status == pq.ExecStatus.FATAL_ERROR:
        if pgconn.status == pq.ConnStatus.BAD:
            raise psycopg.OperationalError(
                (result.error_message or pgconn.error_message).decode("utf-8", "replace").strip())
        raise psycopg.errors.error_from_result(result, encoding=encoding)
    return result


def ping(conn: Any) -> str | None:
    """``SELECT 1`` on driver connection ``conn`` through ``PQexec``, which opens no
    transaction; None if it answered, else the reason. ``conn.execute`` would open a
    transaction, and its ``rollback()`` would then deallocate every prepared
    statement of the connection (psycopg's and the ReconciledJob key checks)."""
    try:
        result = conn.pgconn.exec_(b"SELECT 1")
        if result.status == pq.ExecStatus.TUPLES_OK:
            return None
        return str((result.error_message or conn.pgconn.error_message).decode("utf-8", "replace")).strip()
    except Exception as exc:  # a closed connection
        return str(exc)


def transaction_status(conn: psycopg.Connection[Any]) -> pq.TransactionStatus:
    """libpq's transaction status of ``conn`` (public: ``conn.info.transaction_status``),
    here so the delivery modules name one place for every driver-level read."""
    return conn.info.transaction_status
