"""What every part of the broker shares: settings, key names, the client, the scripts,
and the hot-path call :meth:`BrokerBase._eval`.

:class:`~reconcile.broker.Broker` is assembled from one class per concern, each a
subclass of :class:`BrokerBase` (``enqueue.py``, ``fetch.py``, ``maintenance.py``,
``sets.py``, ``inspection.py``, ``namespace.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.commands.core import Script

from ..config import Settings
from . import _redis_private as private
from .connect import make_client
from .keys import Keys
from .scripts import script_source

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
        self.redis = client if client is not None else make_client(settings.redis_url)
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
