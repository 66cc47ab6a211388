"""Key canonicalisation (reconcile.keys): one identity per row, whatever its spelling.

Unit tests (no services): each column type's accepted spellings, its refusals, and
properties over random input.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql as pg

from reconcile.errors import ArgumentError, InvalidKey
from reconcile.keys import KeyCodec
from reconcile.store.pending import lock_id
from tests.keyed_app import Colour


def codec(type_: Any, name: str = "k") -> KeyCodec:
    return KeyCodec("app.Job", [(name, type_)])


def same_identity(type_: Any, *spellings: Any) -> Any:
    """Every spelling has one wire form (and so one lock id); returns it."""
    c = codec(type_)
    wires = [c.wire([s]) for s in spellings]
    assert all(w == wires[0] for w in wires), wires
    assert len({lock_id("app.Job", w) for w in wires}) == 1
    return wires[0][0]


def refused(type_: Any, value: Any, *words: str) -> str:
    with pytest.raises(InvalidKey) as info:
        codec(type_, "order_id").wire([value])
    text = str(info.value)
    assert "app.Job" in text and "'order_id'" in text, text
    for w in words:
        assert w in text, text
    return text


def test_integer_spellings_of_one_row_are_one_key() -> None:
    assert same_identity(sa.Integer(), 3, "3", " 3 ", "+3", 3.0, Decimal("3"), Decimal("3.00")) == 3
    assert same_identity(sa.BigInteger(), 2**40, str(2**40)) == 2**40


def test_integer_refuses_lossy_and_ambiguous_values() -> None:
    refused(sa.Integer(), 3.5, "3.5", "whole number", "INTEGER")
    refused(sa.Integer(), True, "True")
    refused(sa.Integer(), "3.0")  # PostgreSQL itself refuses '3.0'::int
    refused(sa.Integer(), "three")
    refused(sa.Integer(), math.nan)
    refused(sa.Integer(), [3])
    refused(sa.Integer(), 2**31, "out of range")
    refused(sa.SmallInteger(), 40_000, "SMALLINT")
    assert codec(sa.BigInteger()).wire([2**31]) == [2**31]


def test_text_takes_strings_only() -> None:
    assert same_identity(sa.String(10), "eu") == "eu"
    assert same_identity(sa.Text(), "3") == "3"
    refused(sa.Text(), 3, "not a string")
    refused(sa.String(), b"eu")
    refused(sa.Text(), "a\x00b", "NUL")


def test_char_ignores_trailing_blanks_and_citext_ignores_case() -> None:
    assert same_identity(sa.CHAR(6), "ab", "ab    ") == "ab"
    assert same_identity(pg.CITEXT(), "Alice@Example.com", "alice@example.com") == "alice@example.com"


def test_uuid_in_any_format_is_one_key() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert same_identity(sa.Uuid(), u, str(u), str(u).upper(), u.hex, f"{{{u}}}", u.urn) == str(u)
    refused(sa.Uuid(), "not-a-uuid", "not a UUID")
    refused(sa.Uuid(), 5, "UUID")
    assert codec(sa.Uuid()).native([str(u)]) == (u,), "perform gets a uuid.UUID for as_uuid columns"
    assert codec(sa.Uuid(as_uuid=False)).native([str(u)]) == (str(u),)


def test_numeric_normalises_and_perform_gets_a_decimal() -> None:
    assert same_identity(sa.Numeric(10, 2), Decimal("3.10"), "3.1", 3.1, " 3.100 ") == "3.1"
    assert same_identity(sa.Numeric(), 10, "10", Decimal("1E+1")) == "10"
    assert same_identity(sa.Numeric(), Decimal("-0"), 0) == "0"
    refused(sa.Numeric(), "NaN", "finite")
    refused(sa.Numeric(), True)
    assert codec(sa.Numeric()).native(["3.1"]) == (Decimal("3.1"),)


def test_dates_and_timestamps() -> None:
    assert same_identity(sa.Date(), date(2026, 12, 2), "2026-12-02") == "2026-12-02"
    refused(sa.Date(), datetime(2026, 12, 2, 5), "datetime, not a date")
    instant = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
    later_zone = instant.astimezone(timezone(timedelta(hours=2)))
    assert same_identity(sa.DateTime(timezone=True), instant, later_zone, "2026-12-02T12:00:00+02:00",
                         "2026-12-02T10:00:00Z") == "2026-12-02T10:00:00+00:00"
    refused(sa.DateTime(timezone=True), datetime(2026, 12, 2), "naive")
    naive = same_identity(sa.DateTime(), datetime(2026, 12, 2, 1), "2026-12-02T01:00:00")
    assert naive == "2026-12-02T01:00:00"
    refused(sa.DateTime(), instant, "time zone")
    assert codec(sa.DateTime(timezone=True)).native(["2026-12-02T10:00:00+00:00"]) == (instant,)


def test_booleans_refuse_numbers() -> None:
    assert same_identity(sa.Boolean(), True, "true", "TRUE") is True
    assert same_identity(sa.Boolean(), False, "false") is False
    refused(sa.Boolean(), 1, "ambiguous")


def test_enums_take_their_strings_or_members() -> None:
    assert same_identity(sa.Enum("a", "b", name="e"), "a") == "a"
    refused(sa.Enum("a", "b", name="e"), "c", "enum")
    # SQLAlchemy stores a Python enum's names
    assert same_identity(sa.Enum(Colour, name="colour"), Colour.red, "red") == "red"


def test_json_objects_are_one_key_whatever_their_key_order() -> None:
    assert same_identity(pg.JSONB(), {"a": 1, "z": [1, {"y": 2, "b": 3}]},
                         {"z": [1, {"b": 3, "y": 2}], "a": 1}) == {"a": 1, "z": [1, {"b": 3, "y": 2}]}
    refused(pg.JSONB(), {1: object()}, "JSON-native")


def test_none_is_accepted_for_every_column() -> None:
    for t in (sa.Integer(), sa.Text(), sa.Uuid(), sa.Numeric(), sa.Date()):
        assert codec(t).wire([None]) == [None]


def test_composite_keys_canonicalise_each_column_and_check_the_count() -> None:
    c = KeyCodec("app.Stock", [("sku", sa.Integer()), ("region", sa.String(8))])
    assert c.wire(["7", "eu"]) == c.wire([7.0, "eu"]) == [7, "eu"]
    with pytest.raises(InvalidKey, match=r"2 value\(s\) \(sku, region\), got 1"):
        c.wire([7])
    with pytest.raises(InvalidKey, match="'region'"):
        c.wire([7, 8])


def test_invalid_key_is_an_argument_error() -> None:
    """Callers that catch bad enqueue arguments (ArgumentError, TypeError) catch it too."""
    assert issubclass(InvalidKey, ArgumentError) and issubclass(InvalidKey, TypeError)


def test_unknown_types_pass_json_values_through() -> None:
    c = codec(sa.types.NullType())
    assert c.wire([3]) == [3] and c.wire(["3"]) == ["3"]
    assert not c.driver_is_wire or c.sql_types == ["NULLTYPE"]


# -- properties ----------------------------------------------------------------------------

TYPES = [sa.Integer(), sa.BigInteger(), sa.SmallInteger(), sa.Text(), sa.CHAR(4), sa.Uuid(),
         sa.Numeric(), sa.Float(), sa.Boolean(), sa.Date(), sa.DateTime(timezone=True), sa.DateTime(),
         sa.Enum("a", "b", name="e"), pg.JSONB(), sa.types.NullType()]

anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary()
    | st.decimals() | st.uuids() | st.dates() | st.datetimes() | st.datetimes(timezones=st.just(UTC)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)


@given(st.sampled_from(TYPES), anything)
def test_any_input_gives_a_canonical_value_or_invalid_key(type_: Any, value: Any) -> None:
    c = codec(type_)
    try:
        wire = c.wire([value])
    except InvalidKey:
        return
    assert c.wire(wire) == wire, "the canonical form is a fixed point"
    c.native(wire)  # and always has a native form
    lock_id("app.Job", wire)  # and an identity (JSON-native)


@given(st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_every_spelling_of_an_integer_key_has_one_lock(n: int) -> None:
    spellings: list[Any] = [n, str(n), f" {n} ", Decimal(n)]
    if abs(n) < 2**53:
        spellings.append(float(n))
    same_identity(sa.Integer(), *spellings)


@given(st.uuids())
def test_every_spelling_of_a_uuid_key_has_one_lock(u: uuid.UUID) -> None:
    same_identity(sa.Uuid(), u, str(u).upper(), u.hex, u.urn)
