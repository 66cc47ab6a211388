"""Queue selection: ``-q name,weight`` parsing, weighted and strict order."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from reconcile import ConfigError
from reconcile.worker.queues import QueueOrder, QueueSpec, parse_queue


@pytest.mark.parametrize(
    ("text", "spec"),
    [("default", QueueSpec("default", 1)), ("critical,6", QueueSpec("critical", 6)),
     (" low ,2", QueueSpec("low", 2)), ("mail.out", QueueSpec("mail.out", 1))],
)
def test_parse_queue(text: str, spec: QueueSpec) -> None:
    assert parse_queue(text) == spec


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "non-empty"), (",3", "non-empty"), ("a{b}", "braces"), ("a|b", "'|'"),
     ("a b", "spaces"), ("q,x", "whole number"), ("q,0", "at least 1"), ("q,-2", "at least 1")],
)
def test_bad_queue_specs_raise_config_error_naming_the_value(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_queue(text)
    assert fragment in str(info.value) and repr(text) in str(info.value)


def test_queue_order_needs_distinct_queues() -> None:
    with pytest.raises(ConfigError, match="at least one queue"):
        QueueOrder([])
    with pytest.raises(ConfigError, match="listed twice"):
        QueueOrder([QueueSpec("a"), QueueSpec("a", 2)])


def test_strict_order_is_always_the_given_order() -> None:
    order = QueueOrder([QueueSpec("critical", 6), QueueSpec("default", 2), QueueSpec("low")],
                       strict=True)
    assert all(order.next() == ["critical", "default", "low"] for _ in range(100))


def test_weighted_first_choice_is_proportional_to_weight() -> None:
    random.seed(20240601)
    order = QueueOrder([QueueSpec("critical", 6), QueueSpec("default", 2), QueueSpec("low", 1)])
    draws = 90_000
    first: Counter[str] = Counter()
    for _ in range(draws):
        got = order.next()
        assert sorted(got) == ["critical", "default", "low"], "every queue is still tried"
        first[got[0]] += 1
    shares = {q: first[q] / draws for q in ("critical", "default", "low")}
    print(f"\nfirst-choice shares for weights 6/2/1 over {draws} draws: "
          + ", ".join(f"{q} {s:.4f}" for q, s in shares.items()))
    # expected 6/9, 2/9, 1/9; 4 standard deviations of a binomial share at n=90,000 < 0.007
    assert shares["critical"] == pytest.approx(6 / 9, abs=0.007)
    assert shares["default"] == pytest.approx(2 / 9, abs=0.007)
    assert shares["low"] == pytest.approx(1 / 9, abs=0.007)


def test_equal_weights_give_a_fresh_random_order() -> None:
    random.seed(7)
    order = QueueOrder([QueueSpec("a"), QueueSpec("b"), QueueSpec("c")])
    seen = Counter(tuple(order.next()) for _ in range(6000))
    assert len(seen) == 6
    assert all(800 < n < 1200 for n in seen.values()), seen


