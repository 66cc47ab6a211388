"""How long a Redis-loss incident took to heal: from the scheduler seeing the loss to
every pass it made due having finished once since.

:class:`Healing` is kept by the scheduler that handled the incident (one per incident,
``claim_incident``). :meth:`Healing.check`, called each scheduler round, reads the
schedule rows at most every :data:`CHECK_SECONDS` while an incident is open; when
every pass schedule made due has a ``last_finished_at`` later than it had at the
incident (whichever scheduler ran it), the seconds go to the histogram
``reconcile_incident_heal_seconds`` and to the log. A pass already running at the
incident that finishes after it counts, so the figure can be a little short of the
truth; a second incident while one is open restarts the clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .. import observe

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from ..config import Settings

log = logging.getLogger("reconcile.scheduler")

CHECK_SECONDS = 2.0
"""Seconds between two reads of the schedule rows while an incident heals."""


class Healing:
    def __init__(self) -> None:
        self._open: tuple[float, str, dict[str, datetime | None]] | None = None
        self._checked = -1e18

    def begin(self, reason: str, schedules: Sequence[Any]) -> None:
        """An incident, with the pass schedules it made due (rows of
        :func:`reconcile.store.schedules.list_schedules`, read before the trigger)."""
        self._open = (time.monotonic(), reason, {s.name: s.last_finished_at for s in schedules})

    def check(self, engine: Engine, settings: Settings) -> float | None:
        """The heal time once the open incident healed (then closed), else None."""
        if self._open is None or time.monotonic() - self._checked < CHECK_SECONDS:
            return None
        from ..store import schedules as store

        self._checked = time.monotonic()
        started, reason, before = self._open
        now = {s.name: s.last_finished_at for s in store.list_schedules(engine)}

        def ran_since(name: str, was: datetime | None) -> bool:
            finished = now.get(name)
            return finished is not None and (was is None or finished > was)

        # a schedule deleted meanwhile (not in now) is not waited for
        if not all(ran_since(name, was) for name, was in before.items() if name in now):
            return None
        self._open = None
        seconds = time.monotonic() - started
        log.info("Redis-loss incident healed in %.1fs: every pass it made due ran (%d)",
                 seconds, len(before))
        observe.record_heal(settings, reason, seconds)
        return seconds
