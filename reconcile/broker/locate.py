"""Where one job is: :meth:`LocateOps.locate` (by jid) and :meth:`LocateOps.locate_lock`
(by uniqueness lock), one ``locate.lua`` call each, through the jid index
(``{ns}:jobs``, its format in ``lua/prelude.lua``). Bounded work: the index names the
one place to look, and a queue position is searched among the ``LOCATE_MAXSCAN``
oldest entries of the job's queue only."""

from __future__ import annotations

from typing import Any, NamedTuple

from .base import BrokerBase

LOCATE_MAXSCAN = 10_000
"""Most queue entries one lookup searches, from the oldest (the next to run), 1,000
per ``LRANGE`` inside ``locate.lua``: a few milliseconds of Redis time at most. A job
further back is reported as ``deep`` (queued, position unknown). ``LPOS`` would be
faster for a known member but is not in the documented ACL rule."""

STATES = ("unknown", "running", "scheduled", "retry", "dead", "queued", "deep", "stale")
"""Every ``Location.state``, as ``locate.lua`` returns them."""


class Location(NamedTuple):
    """What ``locate.lua`` found. ``now``: the Redis server's clock (epoch seconds);
    ``since``: when a running job was leased; ``score``: a scheduled or retrying job's
    run-at, or a dead job's time of death; ``position``: 0 = the next to run;
    ``payload``: the job's bytes where it is (the dead record for a dead job);
    ``entry``: the index entry of a ``stale`` answer."""

    state: str
    now: float
    proc: str | None = None
    since: float | None = None
    field: str | None = None
    score: float | None = None
    queue: str | None = None
    position: int | None = None
    length: int | None = None
    payload: bytes | None = None
    entry: bytes | None = None


class LockState(NamedTuple):
    """A uniqueness lock: ``ttl_ms`` (-2: no lock, -1: no expiry, -3: a pass lock), ``jid`` (the jid it
    names while its job retries, else None) and where that job is."""

    ttl_ms: int
    jid: str | None
    location: Location | None


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _location(reply: list[Any]) -> Location:
    state, now = _text(reply[0]), int(reply[1]) / 1000.0
    rest = reply[2:]
    if state == "running":
        proc, since, field, payload = rest
        return Location(state, now, proc=_text(proc), since=int(since) / 1000.0, field=_text(field),
                        payload=payload)
    if state in ("scheduled", "retry", "dead"):
        score, payload = rest
        return Location(state, now, score=float(score), payload=payload)
    if state == "queued":
        queue, position, length, payload = rest
        return Location(state, now, queue=_text(queue), position=int(position), length=int(length),
                        payload=payload)
    if state == "deep":
        queue, length, payload = rest
        return Location(state, now, queue=_text(queue), length=int(length), payload=payload or None)
    if state == "stale":
        return Location(state, now, entry=rest[0])
    return Location(state, now)


class LocateOps(BrokerBase):
    def locate(self, jid: str, maxscan: int = LOCATE_MAXSCAN) -> Location:
        """Where job ``jid`` is, in one bounded call (see :class:`Location`)."""
        return _location(self._locate(keys=[self.keys.script_key], args=["J", maxscan, jid]))

    def locate_lock(self, digest: str, maxscan: int = LOCATE_MAXSCAN,
                    pass_lock: tuple[str, str] | None = None) -> LockState:
        """The uniqueness lock ``digest``: its TTL, and where its job is when the lock
        names it (a retrying job's lock holds its jid; others hold ``1``). With
        ``pass_lock`` = (class, canonical args JSON), a key with no lock key is also
        looked for among its class's pass locks: ``ttl_ms`` -3 when it holds one (a
        pass lock lives as long as its generation, see ``pass_enqueue.lua``)."""
        extra = list(pass_lock) if pass_lock else []
        reply = self._locate(keys=[self.keys.script_key], args=["K", maxscan, digest, *extra])
        ttl, value = int(reply[0]), reply[1]
        jid = _text(value) if value and value != b"1" else None
        return LockState(ttl, jid, _location(reply[2:]) if len(reply) > 2 else None)
