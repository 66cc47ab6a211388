"""Reading the namespace for ``reconcile status``, the API and the dashboard (queues,
processes, counters), the outcome counters' increments, the mirror of the kill
switches, and the start-up checks (PING, eviction policy).

Two readings exist for what inspection shows: a strict one (:meth:`~InspectionOps.processes`,
:meth:`~InspectionOps.counters`) that raises on a value that cannot be reconcile's, and
a raw one (``*_raw``, :meth:`~InspectionOps.process_records`) that returns it as stored,
so a page can show what something else wrote instead of failing on it."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, cast

import redis

from ..outcome import COUNTERS
from .base import BrokerBase

log = logging.getLogger("reconcile.broker")


class InspectionOps(BrokerBase):
    # -- start-up checks ---------------------------------------------------------------

    def ping(self) -> None:
        """One PING: raises the connection, TLS or authentication error if Redis cannot
        be used (the start-up check of workers and schedulers)."""
        self.redis.ping()

    def eviction_policy(self) -> str | None:
        """Redis's ``maxmemory-policy``, or None if CONFIG GET is not allowed (managed
        Redis services and ACL users restricted to the namespace): then one warning is
        logged, and the check is skipped."""
        try:
            reply = self.redis.config_get("maxmemory-policy")
        except redis.ResponseError as exc:
            log.warning("cannot read Redis's maxmemory-policy (%s); make sure it is "
                        "noeviction, or Redis may evict queued jobs", exc)
            return None
        value = reply.get("maxmemory-policy") or reply.get(b"maxmemory-policy")  # type: ignore[call-overload]
        if isinstance(value, bytes):
            return value.decode()
        return str(value) if value is not None else None

    # -- queues ----------------------------------------------------------------------

    def queue_names(self) -> list[str]:
        """Every queue that ever held a job, sorted."""
        return sorted(n.decode() for n in self.redis.smembers(self.keys.queues))  # type: ignore[union-attr]

    def queue_length(self, name: str) -> int:
        """Jobs waiting in queue ``name`` (``LLEN``: one round trip, O(1))."""
        return int(self.redis.llen(self.keys.queue(name)))

    def queue_stats(self, names: Iterable[str]) -> list[tuple[str, int, bytes | None]]:
        """(name, size, oldest payload) for each queue, in one pipeline."""
        names = list(names)
        pipe = self.redis.pipeline(transaction=False)
        for n in names:
            pipe.llen(self.keys.queue(n))
            pipe.lindex(self.keys.queue(n), -1)
        res = pipe.execute()
        return [(n, int(res[2 * i]), res[2 * i + 1]) for i, n in enumerate(names)]

    def queue_stats_raw(self) -> list[tuple[bytes, int, bytes | None]]:
        """(name as stored, size, oldest payload) of every known queue, sorted by name,
        in two round trips. Names stay bytes: inspection must show a name that is not
        UTF-8 (written by something else) rather than fail on it."""
        names = sorted(cast("set[bytes]", self.redis.smembers(self.keys.queues)))
        prefix = self.keys.queue("").encode()
        pipe = self.redis.pipeline(transaction=False)
        for n in names:
            pipe.llen(prefix + n)
            pipe.lindex(prefix + n, -1)
        res = pipe.execute(raise_on_error=False)
        out = []
        for i, n in enumerate(names):
            size, oldest = res[2 * i], res[2 * i + 1]
            out.append((n, size if isinstance(size, int) else 0,
                        oldest if isinstance(oldest, bytes) else None))
        return out

    def queue_entries(self, queue: str, count: int = 100) -> list[bytes]:
        """The next ``count`` jobs of a queue, oldest first."""
        return list(reversed(self.redis.lrange(self.keys.queue(queue), -count, -1)))  # type: ignore[arg-type]

    def set_sizes(self) -> dict[str, int]:
        """Sizes of the scheduled, retry and dead sets, in one pipeline."""
        k = self.keys
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(k.schedule)
        pipe.zcard(k.retry)
        pipe.zcard(k.dead)
        s, r, d = pipe.execute()
        return {"scheduled": int(s), "retry": int(r), "dead": int(d)}

    def due_sizes(self) -> dict[str, int]:
        """Entries of the scheduled and retry sets that are due now, on the Redis
        server's clock (``TIME``, then ``ZCOUNT -inf now`` of each): work a promotion
        is about to move to its queue, which a queue-depth autoscaler counts as
        waiting (docs/scaling.md)."""
        k = self.keys
        sec, usec = self.redis.time()
        now = f"{int(sec)}.{int(usec):06d}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcount(k.schedule, "-inf", now)
        pipe.zcount(k.retry, "-inf", now)
        s, r = pipe.execute()
        return {"scheduled_due": int(s), "retry_due": int(r)}

    # -- counters --------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """The outcome counters as ints (0: never counted); strict: a stored value that
        is not a number raises (:meth:`counters_raw` is the reading for inspection)."""
        return {n: int(v or 0) for n, v in self.counters_raw().items()}

    def counters_raw(self) -> dict[str, bytes | None]:
        """The counters of :meth:`counters` as stored (None: never counted), for
        inspection that must show a value that is not a number instead of failing."""
        values = self.redis.mget([self.keys.stat(n) for n in COUNTERS])
        return dict(zip(COUNTERS, values, strict=True))  # type: ignore[arg-type]

    def incr_counter(self, name: str, by: int = 1) -> None:
        """Add ``by`` to counter ``name`` (the outcomes ``fetch.lua`` does not count)."""
        self.redis.incrby(self.keys.stat(name), by)

    # -- kill switches' mirror ---------------------------------------------------------

    def disabled_jobs(self) -> dict[str, str]:
        """The Redis mirror of disabled job classes: name -> reason."""
        raw = self.redis.hgetall(self.keys.switches)
        return {k.decode(): v.decode() for k, v in raw.items()}  # type: ignore[union-attr]

    def mirror_switches(self, disabled: dict[str, str]) -> None:
        """Replace the mirror with ``disabled`` (name -> reason), atomically."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.keys.switches)
        if disabled:
            pipe.hset(self.keys.switches, mapping=disabled)  # type: ignore[arg-type]
        pipe.execute()

    # -- processes -------------------------------------------------------------------

    def processes(self) -> list[dict[str, Any]]:
        """Registered processes with their info, liveness and leased job count."""
        k = self.keys
        ids = sorted(i.decode() for i in self.redis.smembers(k.procs))  # type: ignore[union-attr]
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(k.proc(i))
            pipe.exists(k.alive(i))
            pipe.hlen(k.lease(i))
        res = pipe.execute()
        out = []
        for n, i in enumerate(ids):
            info = {a.decode(): b.decode() for a, b in res[3 * n].items()}
            info.pop("seq", None)
            out.append({"id": i, "alive": bool(res[3 * n + 1]), "leased": int(res[3 * n + 2]), **info})
        return out

    def scheduler_records(self) -> tuple[float, list[tuple[bytes, bytes, bool]]]:
        """(the Redis server's time, every scheduler record as stored: (owner id, its
        JSON, alive)), in one round trip."""
        k = self.keys
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.hgetall(k.schedulers)
        (seconds, micros), records = pipe.execute()
        owners = sorted(cast("dict[bytes, bytes]", records))
        if not owners:
            return seconds + micros / 1e6, []
        prefix = k.scheduler_alive("").encode()
        pipe = self.redis.pipeline(transaction=False)
        for o in owners:
            pipe.exists(prefix + o)
        flags = pipe.execute()
        return seconds + micros / 1e6, [(o, records[o], bool(f)) for o, f in zip(owners, flags, strict=True)]

    def process_records(self) -> list[tuple[bytes, dict[bytes, bytes] | str, bool, int]]:
        """Every registered process as stored: (id, info hash, alive, leased count).
        The info is the error text instead when its key is not a hash. For inspection,
        which must survive records written by something else (:meth:`processes` is the
        strict reading)."""
        k = self.keys
        ids = sorted(cast("set[bytes]", self.redis.smembers(k.procs)))
        prefix = k.proc("").encode(), k.alive("").encode(), k.lease("").encode()
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(prefix[0] + i)
            pipe.exists(prefix[1] + i)
            pipe.hlen(prefix[2] + i)
        res = pipe.execute(raise_on_error=False)
        out: list[tuple[bytes, dict[bytes, bytes] | str, bool, int]] = []
        for n, i in enumerate(ids):
            info, alive, leased = res[3 * n: 3 * n + 3]
            out.append((i, info if isinstance(info, dict) else str(info), alive is True or alive == 1,
                        leased if isinstance(leased, int) else 0))
        return out
