"""The ``bind`` convention shared by the store modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeAlias

from sqlalchemy.engine import Connection, Engine

Bind: TypeAlias = Engine | Connection
"""An engine (own transaction, committed on success) or a connection (caller's transaction)."""


@contextmanager
def transaction(bind: Bind) -> Iterator[Connection]:
    """A connection inside a transaction.

    With an :class:`Engine`, a fresh transaction that commits when the block ends
    (rolls back on error). With a :class:`Connection`, that connection as is: its
    transaction belongs to the caller, who commits or rolls back.
    """
    if isinstance(bind, Connection):
        yield bind
    else:
        with bind.begin() as conn:
            yield conn
