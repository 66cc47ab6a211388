"""systemd's notify protocol (``Type=notify``, ``WatchdogSec=``), without a dependency.

systemd passes a datagram socket in ``NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace) and, with ``WatchdogSec=``, the watchdog period in
``WATCHDOG_USEC`` (for the process ``WATCHDOG_PID``, when set). A process sends
``READY=1`` once it serves, then ``WATCHDOG=1`` at least once per period, else systemd
kills and restarts it; ``STOPPING=1`` as it stops. Outside systemd (no
``NOTIFY_SOCKET``) every call here does nothing.

:class:`Notifier` sends ``READY=1`` at :meth:`Notifier.start` and, when a watchdog is
asked for, ``WATCHDOG=1`` every half period **while the process's liveness check
passes** (:mod:`.health`): a worker whose heartbeat or fetcher thread died stops
feeding the watchdog and systemd restarts it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger("reconcile.sdnotify")


def notify(state: str) -> bool:
    """Send ``state`` (``"READY=1"``, ...) to ``NOTIFY_SOCKET``; False when there is
    none or it cannot be reached (logged once per call, never raised)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at NOTIFY_SOCKET=%s (%s)", os.environ["NOTIFY_SOCKET"], exc)
        return False
    return True


def watchdog_seconds() -> float | None:
    """The watchdog period systemd asks of this process, or None (no watchdog, or one
    meant for another process)."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        seconds = int(usec) / 1e6
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number of microseconds: no watchdog pings", usec)
        return None
    return seconds if seconds > 0 else None


class Notifier:
    """READY=1 at start, WATCHDOG=1 while ``live()`` is true, STOPPING=1 at stop."""

    def __init__(self, live: Callable[[], bool]) -> None:
        self.live = live
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not os.environ.get("NOTIFY_SOCKET"):
            return
        notify("READY=1")
        period = watchdog_seconds()
        if period is not None:
            self._thread = threading.Thread(target=self._feed, args=(period / 2,),
                                            name="reconcile-sd-watchdog", daemon=True)
            self._thread.start()

    def _feed(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                alive = self.live()
            except Exception:  # a check that fails is a failed check
                log.exception("liveness check failed")
                alive = False
            if alive:
                notify("WATCHDOG=1")
            else:
                log.error("liveness check fails: not feeding systemd's watchdog (systemd "
                          "restarts this process when WatchdogSec runs out)")

    def stop(self) -> None:
        self._stop.set()
        if os.environ.get("NOTIFY_SOCKET"):
            notify("STOPPING=1")
        if self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._thread.join(1.0)
