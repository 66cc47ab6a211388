"""The Redis side of reconcile: every command and script the engine sends.

Hot paths are one round trip per batch: :meth:`Broker.push` (one Lua call per batch
of enqueues), :meth:`Broker.exchange` (acks of finished jobs and the lease of new ones
in one Lua call), :meth:`Broker.promote` and :meth:`Broker.reap` (one Lua call each).
Scripts run through redis-py ``Script`` objects: EVALSHA, reloaded on NOSCRIPT, so
they survive ``SCRIPT FLUSH`` and a Redis restart.

Payloads are bytes end to end (``decode_responses=False``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple, cast

import redis
from redis.backoff import ExponentialBackoff
from redis.commands.core import Script
from redis.retry import Retry

from ..config import Settings
from ..errors import BrokerError
from ..outcome import COUNTERS
from .keys import Keys
from .settle import SettleOp

log = logging.getLogger("reconcile.broker")

WAKE_CAP = 64
"""Most wake-up tokens kept per queue: enough to wake every idle process at once."""

SET_BATCH = 500
"""Jobs per Redis call when an operator moves or deletes members of a set."""

RECOVERY_TTL = 7 * 24 * 3600
"""Seconds a per-job crash-recovery counter is remembered."""


def suspect_threshold(max_recoveries: int) -> int:
    """Recoveries from which a job is leased and run alone. One below the poison limit:
    the first crash recovers the pill and its neighbours at full concurrency; only a
    job that keeps coming back is isolated, so neighbours stop being counted before
    they could reach the limit (they are counted at most ``threshold`` times)."""
    return max(1, max_recoveries - 1)


class PushRecord(NamedTuple):
    """One job to enqueue: queue, run-at (0 = now), lock digest ("" = none), lock ttl ms, payload."""

    queue: str
    at: float
    lock: str
    lock_ttl_ms: int
    payload: bytes


class Delivery(NamedTuple):
    """A leased job: its lease field (``"<seq>|<queue>"``), queue and raw payload."""

    field: bytes
    queue: str
    raw: bytes


@dataclass(frozen=True)
class ReapResult:
    requeued: int
    reaped_processes: int
    poison: list[bytes]


def enqueue_refused(count: int, exc: redis.OutOfMemoryError) -> BrokerError:
    """The error for an enqueue script that Redis refused for lack of memory. Such a
    script fails at its first write, so none of its ``count`` jobs was enqueued."""
    return BrokerError(
        f"Redis refused to enqueue {count} jobs: out of memory (used memory is "
        "over maxmemory and the policy is noeviction); none of them was enqueued. "
        "Free memory or raise maxmemory; ReconciledJob keys are enqueued again by "
        f"the next pass. ({exc})"
    )


def _script_source(name: str) -> str:
    return resources.files("reconcile.broker").joinpath("lua", name).read_text("utf-8")


CONNECT_TIMEOUT = 5.0
"""Seconds to open a connection (TCP and TLS handshake): without it a ``rediss://`` URL
pointing at a plain port, or a black-holed address, would hang a command forever."""


class _TLSConnection(redis.SSLConnection):
    """redis-py's TLS connection with its handshake bounded by the connect timeout:
    redis-py runs the handshake under ``socket_timeout`` (none, for blocking commands),
    so a ``rediss://`` URL pointing at a plain-text port waited forever."""

    def _wrap_socket_with_ssl(self, sock: Any) -> Any:
        sock.settimeout(self.socket_connect_timeout)
        wrapped = super()._wrap_socket_with_ssl(sock)  # type: ignore[no-untyped-call]
        wrapped.settimeout(self.socket_timeout)
        return wrapped


def make_client(url: str) -> redis.Redis:
    """A pooled client that retries connection errors with backoff (not replies).
    ``url`` is one validated by :mod:`reconcile.config` (``redis://``, ``rediss://``,
    ``unix://``). Opening a connection, TLS handshake included, takes at most
    :data:`CONNECT_TIMEOUT` seconds."""
    extra: dict[str, Any] = {}
    if url.lower().startswith("rediss://"):
        extra["connection_class"] = _TLSConnection
    return redis.Redis.from_url(
        url,
        **extra,
        decode_responses=False,
        health_check_interval=30,
        socket_keepalive=True,
        socket_connect_timeout=CONNECT_TIMEOUT,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.01), retries=3),
        retry_on_error=[redis.ConnectionError],
    )


class Broker:
    """Redis operations for one namespace. Thread-safe (redis-py pools connections)."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.redis = client if client is not None else make_client(settings.redis_url)
        self._enqueue = self.redis.register_script(_script_source("enqueue.lua"))
        self._fetch = self.redis.register_script(_script_source("fetch.lua"))
        self._promote = self.redis.register_script(_script_source("promote.lua"))
        self._reap = self.redis.register_script(_script_source("reap.lua"))
        self._release = self.redis.register_script(_script_source("release.lua"))
        self._set_move = self.redis.register_script(_script_source("set_move.lua"))
        self._free: list[Any] = []  # idle connections of _eval and claim (see _checkout)
        self._free_pid = os.getpid()
        self._blocked: dict[str, int] = {}  # proc id -> client id of its waiting claim

    # -- the hot-path call -------------------------------------------------------------

    def _eval(self, script: Script, args: Sequence[Any]) -> Any:
        """EVALSHA ``script`` with ``args``: the hot paths (enqueue, fetch) run here
        instead of through ``Redis.evalsha``, whose command path (pool checkout and
        release, observability hooks) costs about 20-40 us per call, a third of a single
        enqueue. NOSCRIPT and connection errors fall back to the ``Script`` object, which
        loads the script and retries with the client's backoff, as before; so does a
        reply that never came (the call may have run: the same at-least-once as
        redis-py's own retry)."""
        key = self.keys.script_key
        conn = self._checkout()
        ok = False
        try:
            conn.send_packed_command(conn.pack_command("EVALSHA", script.sha, 1, key, *args))
            reply = conn.read_response()
            ok = True
            return reply
        except redis.exceptions.NoScriptError:
            ok = True
        except redis.ResponseError:
            ok = True  # an error reply (out of memory...): the connection is fine
            raise
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            pass
        finally:
            self._checkin(conn, ok)
        return script(keys=[key], args=args)

    def _checkout(self) -> Any:
        """An idle connection of the client's configuration (redis-py's ``Connection``,
        whose methods are untyped), or a new one. A plain list is the whole pool: pop
        and append are atomic, and a connection is used by one thread at a time. A
        forked child starts with none, never its parent's sockets."""
        if self._free_pid != os.getpid():
            self._free, self._free_pid = [], os.getpid()
        try:
            return self._free.pop()
        except IndexError:
            return self.redis.connection_pool.make_connection()

    def _checkin(self, conn: Any, ok: bool) -> None:
        """Return a connection; one that failed or was interrupted mid-reply is
        disconnected first (it reconnects on its next use)."""
        if not ok:
            conn.disconnect()
        self._free.append(conn)

    # -- enqueue ---------------------------------------------------------------------

    def push(self, records: Sequence[PushRecord], now: float | None = None) -> list[bool]:
        """Push a batch in one Lua call; ``False`` where a uniqueness lock was held."""
        if not records:
            return []
        try:
            return self._push(records, now)
        except redis.OutOfMemoryError as exc:
            raise enqueue_refused(len(records), exc) from exc

    def _push(self, records: Sequence[PushRecord], now: float | None) -> list[bool]:
        now = time.time() if now is None else now
        queue = records[0].queue
        if all(r.queue == queue and not r.lock and r.at <= now for r in records):
            # the common bulk case: one queue, no locks, run now
            self._eval(self._enqueue, [repr(now), WAKE_CAP, "Q", queue, *(r.payload for r in records)])
            return [True] * len(records)
        args: list[Any] = [repr(now), WAKE_CAP, "F"]
        for r in records:
            args += (r.queue, repr(r.at), r.lock, r.lock_ttl_ms, r.payload)
        flags = self._eval(self._enqueue, args)
        return [bool(f) for f in flags]

    # -- fetch and settle ------------------------------------------------------------

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
        args: list[Any] = [
            proc_id, count, len(ops) + (adopt is not None), repr(time.time()), s.dead_max_jobs,
            int(s.dead_timeout_seconds), WAKE_CAP, suspect_threshold(s.max_recoveries),
        ]
        if adopt is not None:
            args += ("C", "", adopt, "", "")
        for op in ops:
            args += (op.kind.value, op.field, op.a, op.b, op.c)
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
        conn = self._checkout()
        ok = False
        try:
            # CLIENT ID rides in front of the BLMOVE (no extra round trip), so that
            # :meth:`unblock` can end the wait from another thread at shutdown
            conn.send_packed_command(
                conn.pack_command("CLIENT", "ID")
                + conn.pack_command("BLMOVE", self.keys.queue(queue), self.keys.claim(proc_id),
                                    "RIGHT", "LEFT", repr(timeout))
            )
            self._blocked[proc_id] = int(conn.read_response())
            try:
                got: bytes | None = conn.read_response()
            finally:
                self._blocked.pop(proc_id, None)
            ok = True
            return got
        finally:
            self._checkin(conn, ok)

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

    def release_lock(self, digest: str) -> None:
        """Drop a uniqueness lock (``unique_until = "start"``)."""
        self.redis.delete(self.keys.unique(digest))

    def release_locks(self, digests: Sequence[str]) -> None:
        """Drop uniqueness locks (a pass after a Redis loss no longer trusts them)."""
        if digests:
            self.redis.unlink(*[self.keys.unique(d) for d in digests])

    # -- maintenance -----------------------------------------------------------------

    def promote(self, limit: int = 1000, now: float | None = None) -> tuple[int, int, bool]:
        """Move due scheduled and retry jobs to their queues: (scheduled, retries, more due)."""
        sched, retry, more = self._promote(
            keys=[self.keys.script_key], args=[repr(time.time() if now is None else now), limit, WAKE_CAP]
        )
        return int(sched), int(retry), bool(more)

    def reap(self, now: float | None = None) -> ReapResult:
        """Return the jobs of processes whose lease expired; report poison pills."""
        out = self._reap(
            keys=[self.keys.script_key],
            args=[repr(time.time() if now is None else now), self.settings.max_recoveries,
                  RECOVERY_TTL, WAKE_CAP],
        )
        return ReapResult(int(out[0]), int(out[1]), list(out[2:]))

    def trim_dead(self) -> None:
        """Keep the dead set within ``dead_max_jobs`` and ``dead_timeout_seconds``
        (fetch.lua trims when a worker kills a job; the reaper and promoter do not)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(self.keys.dead, "-inf", time.time() - self.settings.dead_timeout_seconds)
        pipe.zremrangebyrank(self.keys.dead, 0, -(self.settings.dead_max_jobs + 1))
        pipe.execute()

    def release(self, proc_id: str) -> int:
        """Push back every job ``proc_id`` holds and unregister it; returns the count."""
        return int(self._release(keys=[self.keys.script_key], args=[proc_id, WAKE_CAP]))

    def heartbeat(self, proc_id: str, info: dict[str, Any]) -> None:
        """Register or refresh a process: info hash, membership, and its lease sentinel.

        Re-registers everything each beat, so a process survives a Redis restart.
        """
        k = self.keys
        pipe = self.redis.pipeline(transaction=True)
        pipe.sadd(k.procs, proc_id)
        pipe.hset(k.proc(proc_id), mapping={key: str(v) for key, v in info.items()})
        pipe.set(k.alive(proc_id), b"1", px=int(self.settings.lease_seconds * 1000))
        try:
            pipe.execute()
        except redis.OutOfMemoryError:
            # At maxmemory under noeviction, SET/HSET/SADD are refused but PEXPIRE is
            # not: keep the lease alive, or reapers would take this live (and draining)
            # worker for dead and run its jobs a second time.
            if not self.redis.pexpire(k.alive(proc_id), int(self.settings.lease_seconds * 1000)):
                raise

    def lease_fields(self, proc_id: str) -> set[bytes]:
        """The lease fields ``proc_id`` holds."""
        return set(self.redis.hkeys(self.keys.lease(proc_id)))  # type: ignore[arg-type]

    def leased_payloads(self, proc_id: str, fields: Sequence[bytes]) -> list[bytes | None]:
        """Payloads of the given lease fields (None where no longer held)."""
        return list(self.redis.hmget(self.keys.lease(proc_id), list(fields)))  # type: ignore[arg-type]

    def leased_count(self, proc_id: str) -> int:
        return int(self.redis.hlen(self.keys.lease(proc_id)))

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

    # -- inspection ------------------------------------------------------------------

    def queue_names(self) -> list[str]:
        return sorted(n.decode() for n in self.redis.smembers(self.keys.queues))  # type: ignore[union-attr]

    def queue_stats(self, names: Iterable[str]) -> list[tuple[str, int, bytes | None]]:
        """(name, size, oldest payload) for each queue, in one pipeline."""
        names = list(names)
        pipe = self.redis.pipeline(transaction=False)
        for n in names:
            pipe.llen(self.keys.queue(n))
            pipe.lindex(self.keys.queue(n), -1)
        res = pipe.execute()
        return [(n, int(res[2 * i]), res[2 * i + 1]) for i, n in enumerate(names)]

    def set_sizes(self) -> dict[str, int]:
        k = self.keys
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(k.schedule)
        pipe.zcard(k.retry)
        pipe.zcard(k.dead)
        s, r, d = pipe.execute()
        return {"scheduled": int(s), "retry": int(r), "dead": int(d)}

    def counters(self) -> dict[str, int]:
        """The outcome counters as ints (0: never counted); strict: a stored value that
        is not a number raises (:meth:`counters_raw` is the reading for inspection)."""
        return {n: int(v or 0) for n, v in self.counters_raw().items()}

    def counters_raw(self) -> dict[str, bytes | None]:
        """The counters of :meth:`counters` as stored (None: never counted), for
        inspection that must show a value that is not a number instead of failing."""
        values = self.redis.mget([self.keys.stat(n) for n in COUNTERS])
        return dict(zip(COUNTERS, values, strict=True))  # type: ignore[arg-type]

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

    def incr_counter(self, name: str, by: int = 1) -> None:
        self.redis.incrby(self.keys.stat(name), by)

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

    def set_entries(self, which: str, start: int = 0, stop: int = 99) -> list[tuple[bytes, float]]:
        """Members of ``scheduled``, ``retry`` or ``dead`` with scores, newest first for dead."""
        key = {"scheduled": self.keys.schedule, "retry": self.keys.retry, "dead": self.keys.dead}[which]
        if which == "dead":
            rows = self.redis.zrevrange(key, start, stop, withscores=True)
        else:
            rows = self.redis.zrange(key, start, stop, withscores=True)
        return [(m, float(sc)) for m, sc in rows]  # type: ignore[misc, str-unpack]

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

    def _set_key(self, which: str) -> str:
        return {"scheduled": self.keys.schedule, "retry": self.keys.retry, "dead": self.keys.dead}[which]

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
        suffix = {"scheduled": "schedule", "retry": "retry", "dead": "dead"}[which]
        flags: list[bool] = []
        for i in range(0, len(groups), SET_BATCH):
            args: list[Any] = [WAKE_CAP, suffix, mode]
            for group in groups[i:i + SET_BATCH]:
                args += group
            flags += [bool(f) for f in self._set_move(keys=[self.keys.script_key], args=args)]
        return flags

    def queue_entries(self, queue: str, count: int = 100) -> list[bytes]:
        """The next ``count`` jobs of a queue, oldest first."""
        return list(reversed(self.redis.lrange(self.keys.queue(queue), -count, -1)))  # type: ignore[arg-type]

    # -- namespace-wide ----------------------------------------------------------------

    def flush_namespace(self, batch: int = 1000, keep_epoch: bool = False) -> int:
        """Delete every key of this namespace (SCAN + UNLINK); returns how many.

        Keys of other namespaces or applications in the same database are untouched.
        ``keep_epoch`` leaves the epoch sentinel in place (``reconcile flush``, which
        makes every pass due itself): running schedulers then do not take the planned
        flush for a Redis loss. Without it (tests, simulated loss) it goes too.
        """
        deleted = 0
        chunk: list[bytes] = []
        epoch = self.keys.epoch.encode()
        for key in self.redis.scan_iter(match=self.keys.pattern, count=batch):
            if keep_epoch and key == epoch:
                continue
            chunk.append(key)
            if len(chunk) >= batch:
                deleted += int(self.redis.unlink(*chunk))
                chunk = []
        if chunk:
            deleted += int(self.redis.unlink(*chunk))
        return deleted

    def run_id(self) -> str:
        """Redis's ``run_id``: changes when the server restarts."""
        info = self.redis.info("server")
        return str(info.get("run_id", ""))

    def evicted_keys(self) -> int:
        """Redis's ``evicted_keys`` counter (server-wide; reset by a restart)."""
        return int(self.redis.info("stats").get("evicted_keys", 0))

    def claim_incident(self, ttl_ms: int = 1000) -> bool:
        """True for the one caller that handles a Redis loss seen now (``SET NX PX``)."""
        return bool(self.redis.set(self.keys.incident, b"1", nx=True, px=ttl_ms))

    def release_incident(self) -> None:
        """Give the claim back when handling failed, so the loss is handled again."""
        self.redis.delete(self.keys.incident)

    def epoch(self) -> bytes | None:
        """The namespace's epoch sentinel, or None if Redis lost it."""
        return self.redis.get(self.keys.epoch)  # type: ignore[return-value]

    def set_epoch(self, value: str) -> bool:
        """Create the sentinel if absent; True if this call created it."""
        return bool(self.redis.set(self.keys.epoch, value, nx=True))
