"""Fetch and settle: :meth:`FetchOps.exchange` (settlements and new leases in one
``fetch.lua`` call), the idle claim (BLMOVE) and wait, and reading a process's leases."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import redis

from ..config import Settings
from . import _redis_private as private
from .base import WAKE_CAP, BrokerBase
from .settle import SettleOp


def suspect_threshold(max_recoveries: int) -> int:
    """Recoveries from which a job is leased and run alone. One below the poison limit:
    the first crash recovers the pill and its neighbours at full concurrency; only a
    job that keeps coming back is isolated, so neighbours stop being counted before
    they could reach the limit (they are counted at most ``threshold`` times)."""
    return max(1, max_recoveries - 1)


class Delivery(NamedTuple):
    """A leased job: its lease field (``"<seq>|<queue>"``), queue and raw payload."""

    field: bytes
    queue: str
    raw: bytes


class FetchOps(BrokerBase):
    def __init__(self, settings: Settings, client: redis.Redis | None = None, *, fast: bool = True) -> None:
        super().__init__(settings, client, fast=fast)
        self._blocked: dict[str, int] = {}  # proc id -> client id of its waiting claim

    def exchange(
        self, proc_id: str, queues: Sequence[str], count: int, ops: Sequence[SettleOp] = (),
        adopt: str | None = None,
    ) -> list[Delivery]:
        """Apply ``ops`` for finished deliveries, then lease up to ``count`` jobs.

        ``queues`` are tried in the given order. ``adopt`` (a queue name) first moves
        the jobs :meth:`claim` took for ``proc_id`` into its lease hash; they come
        first in the result. Returns the leased deliveries.
        """
        s = self.settings
        # through Sentinel, at most once a second: a worker leaves a demoted primary
        # before its next heartbeat (acks and retries written there are lost)
        self.follow_now_and_then()
        args: list[Any] = [
            proc_id, count, len(ops) + (adopt is not None), s.dead_max_jobs,
            int(s.dead_timeout_seconds), WAKE_CAP, suspect_threshold(s.max_recoveries),
        ]
        if adopt is not None:
            args += ("C", "", adopt, "", "")
        for op in ops:
            # _value_ (the enum's documented sunder attribute) is a plain attribute;
            # .value is a Python-level descriptor: 2 calls per job, seen in the drain's profile
            args += (op.kind._value_, op.field, op.a, op.b, op.c)
        if count > 0:
            args += queues
        flat = self._eval(self._fetch, args)
        out = []
        for i in range(0, len(flat), 2):
            field = flat[i]
            queue = field.split(b"|", 1)[1].decode()
            out.append(Delivery(field, queue, flat[i + 1]))
        return out

    def settle(self, proc_id: str, ops: Sequence[SettleOp]) -> int:
        """Apply settlements without leasing anything; returns how many were sent."""
        if ops:
            self.exchange(proc_id, (), 0, ops)
        return len(ops)

    def claim(self, proc_id: str, queue: str, timeout: float) -> bytes | None:
        """Block until a job is in ``queue``, then move it to ``proc_id``'s claim list
        (BLMOVE) and return it; None after ``timeout`` seconds.

        The idle path of a single-queue worker: the job arrives with the wake-up itself,
        one round trip earlier than a wake-up token and a fetch. A claimed job is as
        safe as a leased one (reap.lua and release.lua push claim lists back); the
        caller adopts it into its lease hash with ``exchange(..., adopt=queue)``.
        """
        conn = self._free.checkout()
        ok = False
        try:
            # the client id comes with the BLMOVE, so that :meth:`unblock` can end the
            # wait from another thread at shutdown
            client_id, read = private.client_id_then_blmove(
                conn, self.keys.queue(queue), self.keys.claim(proc_id), timeout)
            self._blocked[proc_id] = client_id
            try:
                got: bytes | None = read()
            finally:
                self._blocked.pop(proc_id, None)
            ok = True
            return got
        finally:
            self._free.checkin(conn, ok)

    def unclaim(self, proc_id: str, queue: str) -> int:
        """Hand ``proc_id``'s claimed jobs back to the head of ``queue`` (they run next);
        returns how many. For a job claimed while the process went quiet."""
        n = 0
        while self.redis.lmove(self.keys.claim(proc_id), self.keys.queue(queue), "LEFT", "RIGHT") is not None:
            n += 1
        return n

    def unblock(self, proc_id: str) -> None:
        """End ``proc_id``'s :meth:`claim` wait now (it returns None); no-op if not waiting."""
        client_id = self._blocked.get(proc_id)
        if client_id is not None:
            self.redis.client_unblock(client_id)

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> bool:
        """Block until a wake-up token arrives on one of ``queues`` or ``timeout`` passes."""
        got = self.redis.blpop([self.keys.wake(q) for q in queues], timeout=timeout)
        return got is not None

    def lease_fields(self, proc_id: str) -> set[bytes]:
        """The lease fields ``proc_id`` holds."""
        return set(self.redis.hkeys(self.keys.lease(proc_id)))  # type: ignore[arg-type]

    def leased_payloads(self, proc_id: str, fields: Sequence[bytes]) -> list[bytes | None]:
        """Payloads of the given lease fields (None where no longer held)."""
        return list(self.redis.hmget(self.keys.lease(proc_id), list(fields)))  # type: ignore[arg-type]

    def leased_count(self, proc_id: str) -> int:
        """How many jobs ``proc_id`` holds (its lease hash's size)."""
        return int(self.redis.hlen(self.keys.lease(proc_id)))
