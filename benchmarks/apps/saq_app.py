"""saq functions and worker settings (``saq benchmarks.apps.saq_app.settings``)."""

from __future__ import annotations

from typing import Any

from saq import Queue

from .. import probe
from ..common import DBS, url
from ..systems.saq_sys import CONCURRENCY


async def noop(ctx: dict[str, Any], *, i: int) -> None:
    probe.hit()


async def lat(ctx: dict[str, Any], *, t0: float) -> None:
    probe.latency(t0)


settings: dict[str, Any] = {
    "queue": Queue.from_url(url(DBS["saq"])),
    "functions": [noop, lat],
    "concurrency": CONCURRENCY,
}
