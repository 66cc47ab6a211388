"""What every part of the broker shares: settings, key names, the client, the scripts,
and the hot-path call :meth:`BrokerBase._eval`.

:class:`~reconcile.broker.Broker` is assembled from one class per concern, each a
subclass of :class:`BrokerBase` (``enqueue.py``, ``fetch.py``, ``maintenance.py``,
``sets.py``, ``inspection.py``, ``namespace.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import redis
from redis.commands.core import Script

from ..config import Settings
from . import _redis_private as private
from . import connect
from .keys import Keys
from .scripts import script_source

FOLLOW_EVERY = 1.0
"""Seconds between the Sentinel look-ups of :meth:`BrokerBase.follow_now_and_then`
(where is the primary?): at most one a second per process, whatever the enqueue rate."""

FOLLOW_RETRY = 5.0
"""Seconds before the next look-up after one that no Sentinel answered."""

log = logging.getLogger("reconcile.broker")

WAKE_CAP = 64
"""Most wake-up tokens kept per queue: enough to wake every idle process at once."""


class BrokerBase:
    """Redis operations for one namespace. Thread-safe (redis-py pools connections; the
    hot path's own idle connections are :class:`~._redis_private.FreeConnections`)."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None, *, fast: bool = True) -> None:
        """``fast`` False sends every script call through redis-py's public API (the
        reference path of :meth:`_eval`), to compare the two or to rule the fast one
        out; default True."""
        self.settings = settings
        self.fast = fast
        self.keys = Keys(settings.namespace)
        self.redis = client if client is not None else connect.make_client(
            settings.redis_url, socket_timeout=settings.redis_socket_timeout)
        self._enqueue = self.register("enqueue.lua")
        self._fetch = self.register("fetch.lua")
        self._promote = self.register("promote.lua")
        self._reap = self.register("reap.lua")
        self._heartbeat = self.register("heartbeat.lua")
        self._release = self.register("release.lua")
        self._set_move = self.register("set_move.lua")
        self._locate = self.register("locate.lua")
        self._trim_dead = self.register("trim_dead.lua")
        self._free = private.FreeConnections(self.redis)  # idle connections of _eval and claim
        self._primary: tuple[str, int] | None = None  # where follow_primary last found it
        self._sentinel = connect.is_sentinel_client(self.redis)
        self._follow_next = 0.0  # monotonic time follow_now_and_then may look up again
        self._sentinels_down = False  # the last look-up failed (logged once per streak)

    @property
    def via_sentinel(self) -> bool:
        """True if this broker finds its Redis through Sentinel (``redis+sentinel://``)."""
        return self._sentinel

    def follow_now_and_then(self) -> tuple[str, int] | None:
        """:meth:`follow_primary` at most once per :data:`FOLLOW_EVERY` seconds (shared
        by every caller of this broker: the enqueue and fetch paths, a worker's
        heartbeat, the scheduler's Redis watch); a no-op without Sentinel. Returns the
        new address when the primary moved (logged). No Sentinel answering is not an
        error: the primary last known is used, the failure is logged once until a
        Sentinel answers again, and the next look-up waits :data:`FOLLOW_RETRY` seconds
        (a black-holed Sentinel costs up to 2 s of connect timeouts per look-up)."""
        if not self._sentinel:
            return None
        now = time.monotonic()
        if now < self._follow_next:
            return None
        self._follow_next = now + FOLLOW_EVERY
        try:
            moved = self.follow_primary()
        except redis.ConnectionError as exc:
            self._follow_next = now + FOLLOW_RETRY
            if not self._sentinels_down:
                log.warning("no Sentinel answered (%s); using the Redis primary last known, "
                            "asking again every %g s", exc, FOLLOW_RETRY)
            self._sentinels_down = True
            return None
        if self._sentinels_down:
            log.warning("a Sentinel answers again")
            self._sentinels_down = False
        if moved is not None:
            log.warning("Sentinel names a new Redis primary at %s:%d; following it", *moved)
        return moved

    def follow_primary(self) -> tuple[str, int] | None:
        """Through Sentinel: ask where the primary is and, if it moved since the last
        call, drop every idle connection (the client's pool and :attr:`_free`), so the
        next command goes to the new primary rather than to a demoted one that still
        accepts writes. Returns the new address when it moved, else None; a no-op
        without Sentinel. One Sentinel round trip; raises ``ConnectionError`` when no
        Sentinel answers."""
        address = connect.follow_primary(self.redis)
        if address is None:
            return None
        moved = self._primary is not None and address != self._primary
        self._primary = address
        if moved:
            self._free.drop_all()
            return address
        return None

    def register(self, name: str) -> Script:
        """Script ``name`` of ``lua/`` (prelude prepended), registered on this client."""
        return self.redis.register_script(script_source(name))

    def _eval(self, script: Script, args: Sequence[Any]) -> Any:
        """EVALSHA ``script`` with ``args``: the hot paths (enqueue, fetch, pass pages)
        run here instead of through ``Redis.evalsha``, on a connection of
        :attr:`_free` (see :mod:`._redis_private` for what that saves). NOSCRIPT and
        connection errors fall back to the ``Script`` object, which loads the script
        and retries with the client's backoff; so does a reply that never came (the
        call may have run: the same at-least-once as redis-py's own retry).

        The reference path is ``script(keys=[self.keys.script_key], args=args)``: the
        same command through redis-py's public API."""
        key = self.keys.script_key
        if not self.fast:
            return script(keys=[key], args=args)
        conn = self._free.checkout()
        ok = False
        try:
            reply = private.evalsha(conn, script.sha, key, args)
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
            self._free.checkin(conn, ok)
        return script(keys=[key], args=args)

    def _eval_wait(self, script: Script, args: Sequence[Any], replicas: int,
                   timeout_ms: int) -> tuple[Any, int]:
        """:meth:`_eval` with ``WAIT replicas timeout_ms`` in the same round trip: the
        script's reply and how many replicas acknowledged its writes. The reference
        path (and the fallback on NOSCRIPT or a lost connection) is a non-transactional
        pipeline of the ``Script`` call and the ``WAIT``."""
        key = self.keys.script_key
        if self.fast:
            conn = self._free.checkout()
            ok = False
            try:
                reply = private.evalsha_then_wait(conn, script.sha, key, args, replicas, timeout_ms)
                ok = True
                return reply
            except redis.exceptions.NoScriptError:
                ok = True
            except redis.ResponseError:
                ok = True
                raise
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass
            finally:
                self._free.checkin(conn, ok)
        pipe = self.redis.pipeline(transaction=False)
        script(keys=[key], args=args, client=pipe)
        pipe.execute_command("WAIT", replicas, timeout_ms)  # type: ignore[no-untyped-call]
        reply, acked = pipe.execute()
        return reply, int(acked)
