"""Capped doubling: the pause between retries of a call that keeps failing.

One helper for every retry loop that waits longer after each failure (the worker's
fetcher and claim adoption, the scheduler's round, the start-up wait for servers)::

    backoff = Backoff(first=0.05, cap=2.0)
    while True:
        try:
            call()
        except redis.RedisError:
            time.sleep(backoff.next())   # 0.05, 0.1, 0.2, ... 2.0, 2.0, ...
            continue
        backoff.reset()                  # the next failure waits ``first`` again

Not thread-safe: each loop owns its own instance.
"""

from __future__ import annotations


class Backoff:
    """Pauses of ``first``, ``first * factor``, ... seconds, never more than ``cap``.

    :meth:`next` returns the pause to wait now and makes the next one longer;
    :meth:`reset` (after a success) starts again at ``first``. ``current`` is the pause
    :meth:`next` would return, without advancing.
    """

    __slots__ = ("cap", "current", "factor", "first")

    def __init__(self, first: float, cap: float, factor: float = 2.0) -> None:
        if not 0 < first <= cap:
            raise ValueError(f"Backoff needs 0 < first <= cap, got first={first!r} cap={cap!r}")
        if factor < 1:
            raise ValueError(f"Backoff factor must be >= 1, got {factor!r}")
        self.first = first
        self.cap = cap
        self.factor = factor
        self.current = first

    def next(self) -> float:
        """The pause to wait now; the following one is ``factor`` times longer (capped)."""
        pause = self.current
        self.current = min(pause * self.factor, self.cap)
        return pause

    def reset(self) -> None:
        """Start again at ``first`` (call after a success)."""
        self.current = self.first

    def __repr__(self) -> str:
        return f"Backoff(first={self.first!r}, cap={self.cap!r}, current={self.current!r})"
