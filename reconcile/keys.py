"""Key identity: one canonical form for each ReconciledJob key.

PostgreSQL coerces what it is given to the column's type, so ``'3'``, ``3`` and ``3.0``
all name the row whose integer id is 3. The advisory lock id, the uniqueness digest,
the quarantine entry and the idempotency key are hashes of the key's JSON, so they must
be computed from one form per row, or two deliveries of one row take different locks,
both pass the re-check while the other runs, and the row gets two committed performs.

:class:`KeyCodec` derives that form from the types of the columns ``pending()``
selects. Each key has two shapes:

* the **wire form** (:meth:`KeyCodec.wire`): JSON-native values, the same for every
  spelling of one row. Payloads carry it, and every identity is hashed from it;
* the **native form** (:meth:`KeyCodec.native`): the Python values ``perform`` and
  ``is_pending`` receive, of the column's type (``uuid.UUID`` for a ``Uuid`` column
  with ``as_uuid``, ``Decimal``, ``date``, ``datetime``; ints and strings as they are).

=================================  ======================================  ==================
column type (SQLAlchemy)           accepted (lossless)                     wire form
=================================  ======================================  ==================
Integer, SmallInteger, BigInteger  int; a whole float or Decimal; a        int
                                   string of digits (spaces around ok)
Numeric (not Float)                int, Decimal, finite float (its         str, normalised
                                   repr), a numeric string                 (``"3.1"``)
Float                              int, finite float, a numeric string     float
String, Text, Unicode, Varchar     str (no NUL)                            str
CHAR (blank-padded)                str                                     str, right spaces
                                                                           stripped
CITEXT                             str                                     str, lowercased
Uuid / postgresql.UUID             UUID, or a string in any case/format    str, canonical
Boolean                            bool, ``"true"`` / ``"false"``          bool
Date                               date (not datetime), ISO string         ``"YYYY-MM-DD"``
DateTime(timezone=True)            aware datetime, ISO string with offset  ISO string in UTC
DateTime (naive)                   naive datetime, ISO string, no offset   ISO string
Enum                               one of its strings, or an enum member   str
JSON, JSONB                        any JSON-native value                   the value, objects
                                                                           key-sorted
other types (NullType, custom)     any JSON-native value                   as given (objects
                                                                           key-sorted)
=================================  ======================================  ==================

``None`` is accepted for every column (a NULL key is never pending, so its delivery
is "already done"). Anything else, and every lossy or ambiguous coercion (``3.5`` or
``True`` for an integer column, an int for a text column, a naive time for a
``timestamptz``), raises :class:`~reconcile.errors.InvalidKey` naming the class, the
key column, its type and the value. A worker sends a delivery whose key cannot be
canonicalised to the dead set with that reason, without quarantining it (it has no
identity to quarantine). A column of another type gets no canonical form: cast it
in ``pending()`` (``sa.cast(col, sa.Text)``) or give it a type to have one.

The module is over 400 lines because each row of the table above is one small codec
(its accepted inputs, its errors, its wire and native forms) and they are kept side by
side so that one reading shows every type's rules; splitting them would scatter one
contract over several files.
"""

from __future__ import annotations

import enum
import math
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator, TypeEngine

from .errors import InvalidKey

if TYPE_CHECKING:
    from .reconciled import ReconciledJob

Convert = Callable[[Any], Any]

_DIGITS = re.compile(r"\s*[+-]?\d+\s*")
_SCALARS = (str, int, float, bool)

_INT_RANGES = {
    "SMALLINT": (-(2**15), 2**15 - 1),
    "INTEGER": (-(2**31), 2**31 - 1),
    "BIGINT": (-(2**63), 2**63 - 1),
}


class _Refused(Exception):
    """A value a column cannot take losslessly; the message says what is allowed."""


def _unwrap(type_: TypeEngine[Any]) -> TypeEngine[Any]:
    while isinstance(type_, TypeDecorator):
        type_ = type_.impl_instance
    return type_


# -- one converter per column kind: value -> wire value (raises _Refused) ---------------


def _whole(v: Any) -> int | None:
    """``v`` as an int where that loses nothing, else None."""
    kind = type(v)
    if kind is int:
        return int(v)
    if kind is str:
        return int(v) if _DIGITS.fullmatch(v) else None
    if kind is float:
        return int(v) if math.isfinite(v) and v.is_integer() else None
    if isinstance(v, Decimal) and v.is_finite() and v == v.to_integral_value():
        return int(v)
    return None  # bool (an int subclass, never a row id), 3.5, "3.0", anything else


def _integer(lo: int, hi: int, sql: str) -> Convert:
    def convert(v: Any) -> Any:
        out = v if type(v) is int else _whole(v)
        if out is None:
            raise _Refused(f"is not a whole number (allowed for {sql}: an int, or a string, "
                           "float or Decimal holding a whole number)")
        if not lo <= out <= hi:
            raise _Refused(f"is out of range for {sql} ({lo} to {hi})")
        return out

    return convert


def _numeric(v: Any) -> Any:
    kind = type(v)
    try:
        if kind is int or isinstance(v, Decimal):
            d = Decimal(v)
        elif kind is float:
            d = Decimal(repr(v))  # the shortest string that round-trips: what was written
        elif kind is str:
            d = Decimal(v.strip())
        else:
            raise _Refused("is not a number (allowed for NUMERIC: int, Decimal, finite float, "
                           "a numeric string)")
    except InvalidOperation:
        raise _Refused("is not a number") from None
    if not d.is_finite():
        raise _Refused("is not finite")
    text = format(d.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _float(v: Any) -> Any:
    kind = type(v)
    if kind is float or kind is int:
        out = float(v)
    elif kind is str:
        try:
            out = float(v)
        except ValueError:
            raise _Refused("is not a number") from None
    else:
        raise _Refused("is not a number (allowed for FLOAT: int, float, a numeric string)")
    if not math.isfinite(out):
        raise _Refused("is not finite")
    return out


def _text(v: Any) -> Any:
    if type(v) is not str:
        raise _Refused("is not a string (allowed for a text column: str only; "
                       "convert other values yourself, PostgreSQL compares text exactly)")
    if "\x00" in v:
        raise _Refused("contains a NUL character, which PostgreSQL text cannot hold")
    return v


def _char(v: Any) -> Any:
    return _text(v).rstrip(" ")  # bpchar comparison ignores trailing blanks


def _citext(v: Any) -> Any:
    return _text(v).lower()  # citext compares lower(); Python's lower() for the identity


def _uuid(v: Any) -> Any:
    if isinstance(v, uuid.UUID):
        return str(v)
    if type(v) is str:
        try:
            return str(uuid.UUID(v.strip()))
        except ValueError:
            raise _Refused("is not a UUID") from None
    raise _Refused("is not a UUID (allowed: uuid.UUID or a UUID string in any case or format)")


def _boolean(v: Any) -> Any:
    if type(v) is bool:
        return v
    if type(v) is str and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise _Refused("is not a boolean (allowed: True, False, 'true', 'false'; "
                   "0 and 1 are refused as ambiguous)")


def _date(v: Any) -> Any:
    if isinstance(v, datetime):
        raise _Refused("is a datetime, not a date (its time would be dropped)")
    if isinstance(v, date):
        return v.isoformat()
    if type(v) is str:
        try:
            return date.fromisoformat(v.strip()).isoformat()
        except ValueError:
            raise _Refused("is not an ISO date (YYYY-MM-DD)") from None
    raise _Refused("is not a date (allowed: datetime.date or an ISO string)")


def _parse_datetime(v: Any) -> datetime:
    if isinstance(v, datetime):
        return v
    if type(v) is str:
        try:
            return datetime.fromisoformat(v.strip())
        except ValueError:
            raise _Refused("is not an ISO timestamp") from None
    raise _Refused("is not a datetime (allowed: datetime or an ISO string)")


def _timestamptz(v: Any) -> Any:
    dt = _parse_datetime(v)
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise _Refused("is a naive time for a timestamp with time zone (ambiguous: give an offset)")
    return dt.astimezone(UTC).isoformat()


def _timestamp(v: Any) -> Any:
    dt = _parse_datetime(v)
    if dt.tzinfo is not None:
        raise _Refused("has a time zone, but the column is a timestamp without time zone "
                       "(ambiguous: give a naive time)")
    return dt.isoformat()


def _enum(values: Sequence[str], enum_class: type[enum.Enum] | None) -> Convert:
    allowed = frozenset(values)

    def convert(v: Any) -> Any:
        if isinstance(v, enum.Enum):
            for candidate in (v.name, v.value):
                if candidate in allowed:
                    return candidate
        elif type(v) is str and v in allowed:
            return v
        raise _Refused(f"is not one of the enum's values {sorted(allowed)!r}")

    return convert


def _json_native(v: Any) -> Any:
    try:
        return orjson.loads(orjson.dumps(v, option=orjson.OPT_SORT_KEYS))
    except (TypeError, orjson.JSONEncodeError):
        raise _Refused("is not JSON-native (str, int, float, bool, None, list, dict)") from None


def _json(v: Any) -> Any:
    # jsonb equality ignores object key order: the identity is the key-sorted value
    return v if type(v) in _SCALARS else _json_native(v)


def _opaque(v: Any) -> Any:
    if type(v) in _SCALARS:
        return v
    return _json_native(v)  # as given (sorted objects), but no canonical form of the type


# -- wire -> native, where they differ -----------------------------------------------


def _native_uuid(v: Any) -> Any:
    return uuid.UUID(v)


def _native_decimal(v: Any) -> Any:
    return Decimal(v)


def _native_date(v: Any) -> Any:
    return date.fromisoformat(v)


def _native_datetime(v: Any) -> Any:
    return datetime.fromisoformat(v)


def column_codec(type_: TypeEngine[Any]) -> tuple[str, Convert, Convert | None]:
    """(SQL name for messages, value -> wire converter, wire -> native converter or
    None where they are the same) for a column of ``type_``."""
    t = _unwrap(type_)
    if isinstance(t, sa.Boolean):
        return "BOOLEAN", _boolean, None
    if isinstance(t, sa.Enum):
        return "ENUM", _enum(list(t.enums), t.enum_class), None
    if isinstance(t, sa.Integer):
        sql = ("SMALLINT" if isinstance(t, sa.SmallInteger)
               else "BIGINT" if isinstance(t, sa.BigInteger) else "INTEGER")
        lo, hi = _INT_RANGES[sql]
        return sql, _integer(lo, hi, sql), None
    if isinstance(t, sa.Float):
        return "FLOAT", _float, None
    if isinstance(t, sa.Numeric):
        return "NUMERIC", _numeric, _native_decimal
    if isinstance(t, sa.Uuid):
        return "UUID", _uuid, _native_uuid if t.as_uuid else None
    if isinstance(t, sa.DateTime):
        if t.timezone:
            return "TIMESTAMPTZ", _timestamptz, _native_datetime
        return "TIMESTAMP", _timestamp, _native_datetime
    if isinstance(t, sa.Date):
        return "DATE", _date, _native_date
    if isinstance(t, sa.JSON):
        return "JSON", _json, None
    if isinstance(t, sa.String):
        name = type(t).__name__.upper()
        if name == "CITEXT":
            return "CITEXT", _citext, None
        if isinstance(t, sa.CHAR) and not isinstance(t, sa.VARCHAR) and name in ("CHAR", "NCHAR"):
            return "CHAR", _char, None
        return "TEXT", _text, None
    return type(t).__name__.upper(), _opaque, None


_DRIVER_IDENTITY = frozenset({"SMALLINT", "INTEGER", "BIGINT", "TEXT", "BOOLEAN"})
"""Kinds whose wire form is the value read from PostgreSQL for the column (an int for
an integer column, the str of a text column): a pass reading such keys needs no
conversion. Not ENUM: SQLAlchemy's result processing gives a Python enum's members."""


class KeyCodec:
    """The canonical forms of one ReconciledJob class's keys (see the module docstring).

    Built once per class from ``pending()``'s selected columns; thread-safe (immutable).
    """

    def __init__(self, job: str, columns: Sequence[tuple[str, TypeEngine[Any]]]) -> None:
        self.job = job
        self.names = [name for name, _ in columns]
        specs = [column_codec(t) for _, t in columns]
        self.sql_types = [s[0] for s in specs]
        self._wire = [s[1] for s in specs]
        self._native = [s[2] for s in specs]
        self.native_is_wire = all(n is None for n in self._native)
        """Whether ``native`` returns its input unchanged (every column an int, text,
        boolean or enum...)."""
        self.driver_is_wire = all(k in _DRIVER_IDENTITY for k in self.sql_types)
        """Whether keys read from PostgreSQL as ints and strs are already canonical."""

    @classmethod
    def of(cls, job_class: type[ReconciledJob]) -> KeyCodec:
        """The codec of ``job_class`` (its ``pending()`` is called once to read the column
        types; later calls return the cached codec)."""
        found = _codecs.get(job_class)
        if found is None:
            stmt = job_class().pending()
            columns = [(c.key or f"column {i}", c.type) for i, c in enumerate(stmt.selected_columns)]
            found = cls(job_class.job_name, columns)
            with _codecs_lock:
                _codecs[job_class] = found
        return found

    def wire(self, key: Sequence[Any]) -> list[Any]:
        """The canonical JSON-native form of ``key``; InvalidKey names what is wrong."""
        convert = self._wire
        if len(key) != len(convert):
            raise InvalidKey(
                f"{self.job}: a key has {len(convert)} value(s) ({', '.join(self.names)}), "
                f"got {len(key)}: {list(key)!r}"[:500]
            )
        out: list[Any] = []
        for i, v in enumerate(key):
            if v is None:
                out.append(None)
                continue
            try:
                out.append(convert[i](v))
            except _Refused as why:
                raise InvalidKey(
                    f"{self.job}: key column {self.names[i]!r} ({self.sql_types[i]}): "
                    f"{_show(v)} {why}"
                ) from None
        return out

    def native(self, wire: Sequence[Any]) -> tuple[Any, ...]:
        """The values ``perform`` receives for a key in wire form."""
        if self.native_is_wire:
            return tuple(wire)
        return tuple(v if n is None or v is None else n(v) for v, n in zip(wire, self._native, strict=True))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_codecs: dict[type, KeyCodec] = {}
_codecs_lock = threading.Lock()


def forget(job_class: type | None = None) -> None:
    """Drop cached codecs (all, or one class's): for tests that redefine tables."""
    with _codecs_lock:
        if job_class is None:
            _codecs.clear()
        else:
            _codecs.pop(job_class, None)
