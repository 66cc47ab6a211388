"""The outcome-to-settlement table: how a delivery that ended without raising is settled.

Each row of the table in :mod:`reconcile.worker.executor` is one case here, asserted on
the settlement's names (kind, lock, delay, payload), never on the wire letters. A
re-schedule carries a delay, which ``fetch.lua`` adds to the Redis server's clock: no
row reads the worker's clock.
"""

from __future__ import annotations

import pytest

from reconcile.broker import SettleOp
from reconcile.broker.settle import SettleKind
from reconcile.outcome import RESCHEDULED, Outcome
from reconcile.worker.executor import HOLD_DELAY, LOCK_BUSY_DELAY, settlement_of

FIELD = b"lease-1"
LOCK = "u:abc"
PAYLOAD = b'{"jid":"j1"}'


class Payload:
    """A payload source that counts how often it is serialised."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return PAYLOAD


def settle(outcome: Outcome) -> tuple[SettleOp, int]:
    source = Payload()
    op = settlement_of(outcome, FIELD, LOCK, source)
    return op, source.calls


def test_done_is_acked_and_releases_the_lock_without_serialising() -> None:
    op, serialised = settle(Outcome.DONE)
    assert op.kind is SettleKind.ACK
    assert op.field == FIELD
    assert op.lock == LOCK
    assert op.payload is None
    assert serialised == 0


@pytest.mark.parametrize("outcome", [Outcome.ALREADY_DONE, Outcome.DISABLED])
def test_already_done_and_disabled_are_dropped_with_the_lock(outcome: Outcome) -> None:
    op, serialised = settle(outcome)
    assert op.kind is SettleKind.DROP
    assert op.lock == LOCK
    assert op.delay is None
    assert serialised == 0


@pytest.mark.parametrize("outcome", sorted(RESCHEDULED))
def test_lock_busy_and_db_unavailable_run_again_within_the_lock_busy_delay(
    outcome: Outcome,
) -> None:
    op, serialised = settle(outcome)
    assert op.kind is SettleKind.RESCHEDULE
    assert op.delay is not None
    assert LOCK_BUSY_DELAY[0] <= op.delay <= LOCK_BUSY_DELAY[1]
    assert op.payload == PAYLOAD
    # a re-schedule spends no retry and keeps the uniqueness lock
    assert op.lock == ""
    assert serialised == 1


def test_rescheduled_delays_are_jittered_not_fixed() -> None:
    delays = {settlement_of(Outcome.LOCK_BUSY, FIELD, LOCK, Payload()).delay for _ in range(50)}
    assert len(delays) > 1


def test_held_is_rescheduled_after_the_hold_delay_with_its_payload_unchanged() -> None:
    op, serialised = settle(Outcome.HELD)
    assert op.kind is SettleKind.RESCHEDULE
    assert op.delay == HOLD_DELAY
    assert op.payload == PAYLOAD
    assert op.lock == ""
    assert serialised == 1


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.NOT_CONVERGED])
def test_failures_belong_to_the_retry_rules(outcome: Outcome) -> None:
    with pytest.raises(ValueError, match=outcome.value):
        settle(outcome)


def test_every_outcome_is_either_in_the_table_or_a_failure() -> None:
    failures = {Outcome.FAILED, Outcome.NOT_CONVERGED}
    for outcome in Outcome:
        if outcome in failures:
            continue
        op, _ = settle(outcome)
        assert op.field == FIELD, outcome
