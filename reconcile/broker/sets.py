"""The scheduled, retry and dead sets as operators see them: reading members, and moving
or deleting chosen ones (``set_move.lua``). The business rules (which jobs, what payload
a retried job gets) are :mod:`reconcile.sets`'."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .base import WAKE_CAP, BrokerBase

SET_BATCH = 500
"""Jobs per Redis call when an operator moves or deletes members of a set."""

_SUFFIX = {"scheduled": "schedule", "retry": "retry", "dead": "dead"}
"""The set names callers use -> the key suffix ``set_move.lua`` takes."""


class SetOps(BrokerBase):
    def _set_key(self, which: str) -> str:
        return {"scheduled": self.keys.schedule, "retry": self.keys.retry, "dead": self.keys.dead}[which]

    def set_entries(self, which: str, start: int = 0, stop: int = 99) -> list[tuple[bytes, float]]:
        """Members of ``scheduled``, ``retry`` or ``dead`` with scores, newest first for dead."""
        key = self._set_key(which)
        if which == "dead":
            rows = self.redis.zrevrange(key, start, stop, withscores=True)
        else:
            rows = self.redis.zrange(key, start, stop, withscores=True)
        return [(m, float(sc)) for m, sc in rows]  # type: ignore[misc, str-unpack]

    def set_members_at(self, which: str, score: float) -> list[bytes]:
        """The members of set ``which`` whose score is exactly ``score``
        (``ZRANGEBYSCORE key s s``): what an action on one entry whose score the caller
        knows (the dashboard's buttons carry it) reads, instead of the whole set. The
        score must come from Redis (``repr`` of the float round-trips exactly)."""
        bound = repr(float(score))
        return list(self.redis.zrangebyscore(self._set_key(which), bound, bound))  # type: ignore[arg-type]

    def set_scan(
        self, which: str, containing: bytes | None = None, batch: int = SET_BATCH
    ) -> Iterator[list[tuple[bytes, float]]]:
        """Every member of set ``which`` with its score, about ``batch`` at a time
        (``ZSCAN``), so a caller that acts on the whole set never holds it all in
        memory. ``containing`` keeps only members holding those bytes (``MATCH``,
        filtered by Redis: only the candidates cross the network).

        ZSCAN's guarantees: a member present from start to end is seen (possibly
        twice, when Redis rehashes meanwhile); one added or removed meanwhile may or
        may not be. Acting on members while scanning is safe."""
        key = self._set_key(which)
        match = None
        if containing is not None:
            escaped = b"".join(b"\\" + bytes([c]) if c in b"*?[]\\" else bytes([c]) for c in containing)
            match = b"*" + escaped + b"*"
        cursor = 0
        while True:
            cursor, rows = self.redis.zscan(key, cursor, match=match, count=batch)
            if rows:
                yield [(m, float(sc)) for m, sc in rows]  # type: ignore[misc]
            if cursor == 0:
                return

    def set_move(self, which: str, moves: Sequence[tuple[bytes, str, bytes]]) -> list[bool]:
        """Move members of set ``which`` (``scheduled``, ``retry``, ``dead``) to their
        queues now: each (member, queue, payload to push) leaves the set and is pushed,
        atomically per call. Returns a flag per move: False where the member was
        already gone (nothing pushed). ``SET_BATCH`` jobs per call."""
        return self._set_op(which, "Q", [list(m) for m in moves])

    def set_delete(self, which: str, members: Sequence[tuple[bytes, str]]) -> list[bool]:
        """Delete members of set ``which``: each (member, lock digest or "") leaves the
        set and, if it was there, its uniqueness lock is released. A flag per member."""
        return self._set_op(which, "X", [list(m) for m in members])

    def _set_op(self, which: str, mode: str, groups: list[list[Any]]) -> list[bool]:
        suffix = _SUFFIX[which]
        flags: list[bool] = []
        for i in range(0, len(groups), SET_BATCH):
            args: list[Any] = [WAKE_CAP, suffix, mode]
            for group in groups[i:i + SET_BATCH]:
                args += group
            flags += [bool(f) for f in self._set_move(keys=[self.keys.script_key], args=args)]
        return flags
