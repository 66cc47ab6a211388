"""Redis broker: owns every key name (``keys.py``), every Lua script (``lua/``, each run
after the shared ``lua/prelude.lua``) and every use of a redis-py internal
(``_redis_private.py``). :class:`Broker` is the facade; ``broker.py`` lists the module
of each concern it is assembled from."""

from __future__ import annotations

import threading

from ..config import Settings, get_settings
from .broker import Broker, Delivery, Location, LockState, PushRecord, ReapResult, suspect_threshold
from .keys import Keys
from .settle import SettleKind, SettleOp

__all__ = ["Broker", "Delivery", "Keys", "Location", "LockState", "PushRecord", "ReapResult", "SettleKind",
           "SettleOp", "get_broker", "suspect_threshold"]

_lock = threading.Lock()
_cache: dict[Settings, Broker] = {}


def get_broker(settings: Settings | None = None) -> Broker:
    """The shared broker for ``settings`` (default: this process's settings)."""
    settings = settings or get_settings()
    broker = _cache.get(settings)
    if broker is None:
        with _lock:
            broker = _cache.get(settings)
            if broker is None:
                broker = Broker(settings)
                _cache[settings] = broker
    return broker
