"""Figures each scenario reports, appended as JSON lines for ``tests.fault.report``.

The file is ``$RECONCILE_FAULT_RESULTS`` (set by the report runner); without it the
figures are only printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from tests.fault.harness import Figures

RESULTS_ENV = "RECONCILE_FAULT_RESULTS"


def record(
    scenario: str,
    title: str,
    figures: Figures,
    heal: str,
    target: str,
    *,
    heal_seconds: float | None = None,
    notes: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """Record one row: ``scenario`` is its number (``"4b"``), ``heal`` the measured time(s)
    to heal as text, ``target`` the goal it is held to."""
    row = {
        "scenario": scenario,
        "title": title,
        "keys_due": figures.keys_due,
        "lost": figures.lost,
        "dup_effects": figures.dup_effects,
        "dup_exec": figures.dup_exec,
        "performs": figures.performs,
        "deliveries": figures.deliveries,
        "heal": heal,
        "heal_seconds": heal_seconds,
        "target": target,
        "notes": notes,
        "recorded_at": time.time(),
        **extra,
    }
    print(f"\nFAULT {scenario} {title}: " + json.dumps(
        {k: v for k, v in row.items() if k not in ("scenario", "title", "recorded_at")}))
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
    return row
