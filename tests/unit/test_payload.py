"""Payload contracts: strict JSON-native arguments, size limit, decode reasons, jids."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import re
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconcile.errors import ArgumentError, PayloadError, PayloadTooLarge
from reconcile.payload import MAX_ARG_DEPTH, PayloadTemplate, check_args, decode, encode, new_jid

LIMIT = 1_000_000


class Color(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 3


class MyStr(str):
    pass


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (dt.datetime(2024, 1, 1, tzinfo=dt.UTC), "datetime.datetime"),
        (dt.date(2024, 1, 1), "datetime.date"),
        (decimal.Decimal("1.5"), "decimal.Decimal"),
        (uuid.UUID(int=1), "uuid.UUID"),
        ((1, 2), "tuple"),
        ({1, 2}, "set"),
        (b"bytes", "bytes"),
        (object(), "object"),
        (Color.RED, "Color"),
        (Level.HIGH, "Level"),  # an int subclass: would not survive the round trip
        (MyStr("x"), "MyStr"),
    ],
)
def test_non_json_native_argument_is_named_with_its_type(value: Any, type_name: str) -> None:
    with pytest.raises(ArgumentError) as info:
        check_args(["ok", value], "app.Job", ["name", "when"])
    message = str(info.value)
    assert "'when' (args[1])" in message, message
    assert type_name in message, message
    assert "app.Job" in message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (2**64, "outside 64 bits"),
        (-(2**63) - 1, "outside 64 bits"),
        ({1: "x"}, "dict keys must be str"),
        (_nested(MAX_ARG_DEPTH + 1), "nested deeper"),
    ],
)
def test_values_json_cannot_carry_faithfully_are_refused(value: Any, fragment: str) -> None:
    with pytest.raises(ArgumentError, match=re.escape(fragment)):
        check_args([value], "app.Job")


def test_nested_offender_is_located_by_path() -> None:
    with pytest.raises(ArgumentError) as info:
        check_args([{"items": [1, {"at": dt.date(2024, 1, 1)}]}], "app.Job", ["order"])
    assert "'order' (args[0])['items'][1]['at']" in str(info.value)
    assert "datetime.date" in str(info.value)


def test_argument_error_is_a_type_error_and_payload_error() -> None:
    assert issubclass(ArgumentError, TypeError)
    assert issubclass(ArgumentError, PayloadError)


def test_boundaries_are_accepted() -> None:
    check_args(
        [2**64 - 1, -(2**63), 1.5, True, None, "", [], {}, _nested(MAX_ARG_DEPTH - 1)],
        "app.Job",
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(json_values, max_size=5))
def test_json_native_args_round_trip_exactly(args: list[Any]) -> None:
    check_args(args, "app.Job")
    payload = {"queue": "default", "jid": new_jid(), "class": "app.Job", "args": args}
    assert decode(encode(payload, LIMIT), LIMIT) == payload


def test_encode_is_compact_and_keeps_empty_containers() -> None:
    payload = {"queue": "q", "jid": "j", "class": "c", "args": [[], {}, "é"]}
    raw = encode(payload, LIMIT)
    assert raw == '{"queue":"q","jid":"j","class":"c","args":[[],{},"é"]}'.encode()


def test_encode_refuses_payload_over_limit_and_says_by_how_much() -> None:
    payload = {"queue": "q", "jid": "j", "class": "app.Big", "args": ["x" * 200]}
    size = len(orjson.dumps(payload))
    assert encode(payload, size) == orjson.dumps(payload)
    with pytest.raises(PayloadTooLarge) as info:
        encode(payload, size - 1)
    assert str(size) in str(info.value) and str(size - 1) in str(info.value)
    assert "app.Big" in str(info.value)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b"[1, 2]", "JSON list, not an object"),
        (b'"str"', "JSON str, not an object"),
        (b"{}", "no 'class'"),
        (b'{"class": 5, "args": []}', "no 'class'"),
        (b'{"class": "a.B", "args": {}}', "no 'args' list"),
        (b'{"class": "a.B", "args": [], "queue": "q"}', "no 'jid'"),
        (b'{"class": "a.B", "args": [], "jid": "j"}', "no 'queue'"),
    ],
)
def test_decode_says_why_a_payload_is_unusable(raw: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=re.escape(reason)):
        decode(raw, LIMIT)


def test_decode_refuses_oversize_before_parsing() -> None:
    with pytest.raises(PayloadError, match="over the max_payload_bytes limit of 10"):
        decode(b'{"class":"a.B","args":[],"jid":"j","queue":"q"}', 10)


def test_jid_is_24_hex_and_unique() -> None:
    jids = {new_jid() for _ in range(10_000)}
    assert len(jids) == 10_000
    assert all(re.fullmatch(r"[0-9a-f]{24}", j) for j in jids)


# -- PayloadTemplate: the reference builder and the fast one -----------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)
_args = st.lists(st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
), max_size=4)


@settings(max_examples=300)
@given(
    name=_text.filter(bool), queue=st.from_regex(r"[A-Za-z0-9_.:\-]{1,12}", fullmatch=True),
    retry=st.booleans() | st.integers(0, 50), unique_until=st.none() | st.sampled_from(["success", "start"]),
    args=_args, created_at=st.floats(1e9, 3e9), later=st.none() | st.floats(0.001, 1e6),
    traceparent=st.none() | st.just("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
)
def test_template_assembles_the_bytes_of_its_reference_dict(
    name: str, queue: str, retry: bool | int, unique_until: str | None, args: list[Any],
    created_at: float, later: float | None, traceparent: str | None,
) -> None:
    """The fast builder's bytes are ``orjson.dumps`` of the reference dict, for any
    JSON-native args, options, and a job that runs now or later, locked or not, with
    a trace context (tracing on) or without."""
    template = PayloadTemplate(name, queue, retry, unique_until, traceparent)
    jid = new_jid()
    lock = "ab" * 16 if unique_until is not None else ""
    at = created_at + later if later is not None else 0.0
    stamps = template.created(created_at) + template.at_field(at) if at else template.ready(created_at)
    fast = template.assemble(jid, orjson.dumps(args), stamps, lock)
    reference = template.reference(jid, args, created_at, at, lock)
    assert fast == orjson.dumps(reference)
    assert list(reference)[:2] == ["queue", "jid"], "the Lua scripts read them anchored"
    assert decode(fast, LIMIT) == reference
    assert reference.get("traceparent") == traceparent
