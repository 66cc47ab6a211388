"""``reconcile.outcome`` of a ``perform`` span: what a delivery came to, named from its
settlement and the outcome ``perform`` returned (pure: no OpenTelemetry needed)."""

from __future__ import annotations

import pytest

from reconcile.broker import SettleOp
from reconcile.outcome import Outcome
from reconcile.tracing import attempt_of, outcome_of

F = b"field"


@pytest.mark.parametrize(("op", "outcome", "timed_out", "name"), [
    (SettleOp.ack(F), Outcome.DONE, False, "done"),
    (SettleOp.drop(F), Outcome.ALREADY_DONE, False, "already_done"),
    (SettleOp.drop(F), Outcome.DISABLED, False, "disabled"),
    (SettleOp.drop(F), Outcome.DONE, False, "discard"),  # perform raised; the rules discarded it
    (SettleOp.reschedule(F, 1.0, b"{}"), Outcome.LOCK_BUSY, False, "lock_busy"),
    (SettleOp.reschedule(F, 1.0, b"{}"), Outcome.DB_UNAVAILABLE, False, "db_unavailable"),
    (SettleOp.reschedule(F, 30.0, b"{}"), Outcome.HELD, False, "held"),
    (SettleOp.retry(F, 5.0, b"{}"), Outcome.DONE, False, "retry"),
    (SettleOp.dead(F, b"{}"), Outcome.DONE, False, "dead"),
    (SettleOp.drop(F), Outcome.DONE, True, "timed_out"),  # the watchdog settled it
    (SettleOp.ack(F), Outcome.DONE, True, "timed_out"),  # a late success is void
])
def test_a_perform_span_names_what_the_delivery_came_to(
    op: SettleOp, outcome: Outcome, timed_out: bool, name: str
) -> None:
    assert outcome_of(op, outcome, timed_out) == name


@pytest.mark.parametrize(("payload", "attempt"), [
    ({}, 1), ({"retry_count": 0}, 2), ({"retry_count": 4}, 6), ({"retry_count": "x"}, 1),
])
def test_the_attempt_counts_the_first_run_as_one(payload: dict[str, object], attempt: int) -> None:
    assert attempt_of(payload) == attempt
