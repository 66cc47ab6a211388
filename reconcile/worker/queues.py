"""Which queue a fetch tries first.

``-q critical,6 -q default,2 -q low`` gives weights 6, 2 and 1: each fetch orders the
queues by a weighted random draw, so ``critical`` is tried first 6 times in 9 (the
semantics of Sidekiq's weighted fetch); every queue is still tried when the ones before
it are empty. ``--strict`` always tries them in the order given, so a lower queue only
runs when the ones above are empty. Equal weights give a fresh random order per fetch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class QueueSpec:
    name: str
    weight: int = 1


def parse_queue(text: str) -> QueueSpec:
    """``"name"`` or ``"name,weight"``; ConfigError names the bad value."""
    name, _, weight = text.partition(",")
    name = name.strip()
    if not name or any(c in name for c in "{}| \t"):
        raise ConfigError(f"queue {text!r}: a queue name must be non-empty, without braces, '|' or spaces")
    if not weight:
        return QueueSpec(name)
    try:
        value = int(weight)
    except ValueError:
        raise ConfigError(f"queue {text!r}: weight must be a whole number") from None
    if value < 1:
        raise ConfigError(f"queue {text!r}: weight must be at least 1")
    return QueueSpec(name, value)


class QueueOrder:
    """Produces the order of queues for each fetch."""

    def __init__(self, specs: list[QueueSpec], strict: bool = False) -> None:
        if not specs:
            raise ConfigError("queues: at least one queue is needed")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"queues: a queue is listed twice in {names}")
        self.specs = specs
        self.strict = strict
        self.names = names
        self._weights = [s.weight for s in specs]
        self._single = len(specs) == 1

    def next(self) -> list[str]:
        if self.strict or self._single:
            return self.names
        # Weighted draw without replacement (Efraimidis-Spirakis keys): the chance that a
        # queue comes first is proportional to its weight.
        keyed = sorted(
            ((random.random() ** (1.0 / w), n) for n, w in zip(self.names, self._weights, strict=True)),
            reverse=True,
        )
        return [n for _, n in keyed]
