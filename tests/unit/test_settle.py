"""Settlements: each named constructor puts its fields where ``fetch.lua`` reads them
(code, lease field, then a, b, c), and the named properties read them back. A retry
and a re-schedule carry a delay (``fetch.lua`` adds it to the Redis server's clock),
never an absolute time."""

from __future__ import annotations

import pytest

from reconcile.broker import SettleKind, SettleOp

FIELD = b"7|default"


@pytest.mark.parametrize(
    ("op", "wire", "named"),
    [
        (SettleOp.ack(FIELD, "lk"), ("A", "lk", "", ""), {"lock": "lk", "delay": None, "payload": None}),
        (SettleOp.drop(FIELD), ("X", "", "", ""), {"lock": "", "delay": None, "payload": None}),
        (SettleOp.retry(FIELD, 12.5, b"{}", "lk"), ("R", "12.5", b"{}", "lk"),
         {"lock": "lk", "delay": 12.5, "payload": b"{}"}),
        (SettleOp.reschedule(FIELD, 3.0, b"{}"), ("S", "3.0", b"{}", ""),
         {"lock": "", "delay": 3.0, "payload": b"{}"}),
        (SettleOp.dead(FIELD, b"{rec}", "lk"), ("D", b"{rec}", "lk", ""),
         {"lock": "lk", "delay": None, "payload": b"{rec}"}),
        (SettleOp.push_back(FIELD, "default", b"raw"), ("Q", "default", b"raw", ""),
         {"lock": "", "delay": None, "payload": b"raw", "queue": "default"}),
    ],
    ids=lambda v: v.kind.name.lower() if isinstance(v, SettleOp) else "",
)
def test_constructors_lay_out_the_fetch_script_arguments(
    op: SettleOp, wire: tuple[object, ...], named: dict[str, object]
) -> None:
    assert (op.kind.value, op.a, op.b, op.c) == wire
    assert op.field == FIELD
    for name, value in named.items():
        assert getattr(op, name) == value, name


def test_only_a_push_back_names_a_queue() -> None:
    assert SettleOp.push_back(FIELD, "low", b"raw").queue == "low"
    assert [SettleOp.ack(FIELD).queue, SettleOp.dead(FIELD, b"r").queue] == [None, None]


def test_kinds_are_compared_by_name_not_by_letter() -> None:
    assert SettleOp.ack(FIELD).kind is SettleKind.ACK
    assert SettleOp.ack(FIELD).kind != "A", "the wire letter stays inside broker/"
