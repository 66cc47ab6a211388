"""The Redis side of reconcile: :class:`Broker`, every command and script the engine sends.

``Broker`` is the facade; each concern is one module of this package, and the class
is assembled from them:

============================  ======================================================
module                        what
============================  ======================================================
``base.py``                   settings, keys, client, scripts; the hot-path call
``enqueue.py``                ``push`` (one ``enqueue.lua`` call per batch), locks
``fetch.py``                  ``exchange`` (settle + lease, one ``fetch.lua`` call),
                              the idle claim (BLMOVE) and wait, leases
``maintenance.py``            heartbeat, release, promote, reap, dead-set trim
``sets.py``                   scheduled / retry / dead sets for operators
``inspection.py``             queues, processes, counters, switch mirror, checks
``locate.py``                 where one job is, by jid or by lock (``locate.lua``)
``namespace.py``              flush, epoch sentinel, incident claim
``scripts.py``                the Lua scripts with ``lua/prelude.lua`` prepended
``connect.py``                the redis-py client (timeouts, TLS, retries)
``_redis_private.py``         every redis-py internal used, and why
``pass_push.py``              a reconcile pass's pages (``pass_enqueue.lua``)
``settle.py``                 settlement operations and their wire codes
``keys.py``                   every key name
============================  ======================================================

Hot paths are one round trip per batch: :meth:`Broker.push` (one Lua call per batch
of enqueues), :meth:`Broker.exchange` (acks of finished jobs and the lease of new ones
in one Lua call), :meth:`Broker.promote` and :meth:`Broker.reap` (one Lua call each).
Scripts run through redis-py ``Script`` objects: EVALSHA, reloaded on NOSCRIPT, so
they survive ``SCRIPT FLUSH`` and a Redis restart.

Payloads are bytes end to end (``decode_responses=False``).
"""

from __future__ import annotations

from .base import WAKE_CAP, BrokerBase
from .connect import CONNECT_TIMEOUT, make_client
from .enqueue import EnqueueOps, PushRecord, enqueue_refused
from .fetch import Delivery, FetchOps, suspect_threshold
from .inspection import InspectionOps
from .locate import LOCATE_MAXSCAN, LocateOps, Location, LockState
from .maintenance import RECOVERY_TTL, MaintenanceOps, ReapResult
from .namespace import NamespaceOps
from .sets import SET_BATCH, SetOps

__all__ = [
    "CONNECT_TIMEOUT", "LOCATE_MAXSCAN", "RECOVERY_TTL", "SET_BATCH", "WAKE_CAP", "Broker", "BrokerBase",
    "Delivery", "Location", "LockState", "PushRecord", "ReapResult", "enqueue_refused", "make_client",
    "suspect_threshold",
]


class Broker(EnqueueOps, FetchOps, MaintenanceOps, SetOps, InspectionOps, NamespaceOps, LocateOps):
    """Redis operations for one namespace. Thread-safe (redis-py pools connections)."""
