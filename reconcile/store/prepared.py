"""Key checks as SQL-level prepared statements (setting ``prepared_checks``).

A compiled check (:class:`~reconcile.store.key_check.KeyCheck`) is prepared with SQL
``PREPARE`` once per pooled connection: PostgreSQL then neither parses nor plans it per
delivery. Two statements per check: the check itself (step 2) and the check as the
failing cast of step 4 (:func:`not_converged_cast`), which aborts a COMMIT sent in
the same simple query. This module holds the statements' text and the process-wide
record of what could not be prepared; :class:`~reconcile.store.driver_tx.DriverTx`
prepares and runs them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

NOT_CONVERGED = "reconcile: the key is still pending after perform"
"""Marker of the failed cast that aborts a non-converged delivery's COMMIT."""


def not_converged_cast(check: str) -> str:
    """``check`` as the statement that fails (with :data:`NOT_CONVERGED`) while the key
    is still pending: the cast applies to the CASE's result, so it fails at run time
    only (a cast of the constant itself would be folded, and fail, while planning)."""
    return f"SELECT (CASE WHEN ({check}) THEN '{NOT_CONVERGED}' END)::int"


@dataclass(frozen=True, slots=True)
class PreparedCheck:
    """A compiled check as SQL-level prepared statements (see :func:`prepared_form`).

    ``prepare`` creates two statements on a connection: ``<name>`` (the check) and
    ``<name>_c`` (the check as the failing cast of :meth:`DriverTx.commit_if_converged`).
    ``execute`` and ``commit`` call them: psycopg templates taking the check's params.
    """

    name: str
    prepare: str
    execute: str
    commit: str
    order: tuple[str, ...]
    """Parameter names in positional order."""

    def inline(self, commit: bool, params: dict[str, Any]) -> str | None:
        """``EXECUTE`` (or the commit check's) with ``params`` inlined when every one
        is a plain ``int`` (the common integer key), which needs no quoting: the
        decimal text of an int is its SQL literal. None otherwise (psycopg's
        ``mogrify`` binds them)."""
        values = [params[n] for n in self.order]
        if not all(type(v) is int for v in values):
            return None
        suffix = "_c" if commit else ""
        return f"EXECUTE {self.name}{suffix}({', '.join(map(str, values))})"


_PLACEHOLDER = re.compile(r"%%|%\((\w+)\)s")
_forms: dict[str, PreparedCheck] = {}


def prepared_form(sql: str) -> PreparedCheck:
    """The prepared-statement form of check ``sql`` (psycopg's ``%(name)s`` format, as
    :class:`KeyCheck` holds it): placeholders become ``$1..$n`` in order of first use,
    ``%%`` becomes ``%``. Named after a hash of ``sql``, so every process and connection
    gives the same check the same name. Memoised (one entry per check SQL)."""
    form = _forms.get(sql)
    if form is not None:
        return form
    order: list[str] = []

    def positional(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return "%"
        if m.group(1) not in order:
            order.append(m.group(1))
        return f"${order.index(m.group(1)) + 1}"

    body = _PLACEHOLDER.sub(positional, sql)
    name = "reconcile_" + hashlib.blake2b(sql.encode(), digest_size=8).hexdigest()
    args = "(" + ", ".join(f"%({n})s" for n in order) + ")"
    form = _forms[sql] = PreparedCheck(
        name=name,
        prepare=f"PREPARE {name} AS {body}; PREPARE {name}_c AS {not_converged_cast(body)}",
        execute=f"EXECUTE {name}{args}",
        commit=f"EXECUTE {name}_c{args}",
        order=tuple(order),
    )
    return form


switched_off: list[str] = []
"""Holds the reason once prepared checks turned out not to work in this process."""
unpreparable: set[str] = set()
"""Check SQL that PostgreSQL refused to prepare (sent as SQL instead)."""
commit_as_sql: set[str] = set()
"""Check SQL whose prepared commit check was deallocated during a perform: its job's
perform rolls back savepoints or runs DDL, so its commit checks go as SQL."""


def known(sql: str) -> PreparedCheck | None:
    """The prepared form of check ``sql`` if :func:`prepared_form` made it in this
    process (whether it is prepared on a given connection is the connection's record)."""
    return _forms.get(sql)
