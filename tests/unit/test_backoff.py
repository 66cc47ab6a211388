"""The retry pause helper: capped doubling with reset (no services needed)."""

from __future__ import annotations

import itertools

import pytest

from reconcile.backoff import Backoff


def test_pauses_double_from_first_up_to_the_cap_and_stay_there() -> None:
    backoff = Backoff(first=0.05, cap=2.0)
    pauses = [backoff.next() for _ in range(9)]
    assert pauses == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])


def test_reset_starts_again_at_first() -> None:
    backoff = Backoff(first=1.0, cap=10.0)
    assert [backoff.next() for _ in range(3)] == [1.0, 2.0, 4.0]
    backoff.reset()
    assert backoff.next() == 1.0
    assert backoff.current == 2.0


def test_current_reads_the_next_pause_without_advancing() -> None:
    backoff = Backoff(first=0.5, cap=30.0)
    assert backoff.current == backoff.current == 0.5
    assert backoff.next() == 0.5
    assert backoff.current == 1.0


def test_a_cap_below_a_doubling_is_reached_exactly() -> None:
    backoff = Backoff(first=3.0, cap=10.0)
    assert list(itertools.islice(iter(backoff.next, None), 4)) == [3.0, 6.0, 10.0, 10.0]


def test_another_factor_is_honoured() -> None:
    backoff = Backoff(first=1.0, cap=100.0, factor=3.0)
    assert [backoff.next() for _ in range(5)] == [1.0, 3.0, 9.0, 27.0, 81.0]


@pytest.mark.parametrize(("first", "cap", "factor"), [(0.0, 1.0, 2.0), (2.0, 1.0, 2.0),
                                                       (-1.0, 1.0, 2.0), (1.0, 2.0, 0.5)])
def test_nonsense_parameters_are_refused(first: float, cap: float, factor: float) -> None:
    with pytest.raises(ValueError, match="Backoff"):
        Backoff(first, cap, factor)
