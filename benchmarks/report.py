"""Aggregation over rounds, the figures table and the target checks.

Figures are medians over rounds; a peer's ratio is the median over rounds of
(peer / reconcile) measured in the same round, so machine-speed drift between rounds
cancels out.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .scenarios import Metric
from .systems import BASELINE

Rounds = list[dict[str, dict[str, float]]]   # round -> system -> metric key -> value
NOT_PEERS = {BASELINE, "redis", "procrastinate", "psycopg"}  # the last two: reconciled section only


def is_peer(system: str) -> bool:
    """A competitor of reconcile (not reconcile at another commit, not a floor)."""
    return system not in NOT_PEERS and not system.startswith(BASELINE + "@")


def round_ratios(rounds: Rounds, num: str, den: str, key: str) -> list[float]:
    """``num / den`` for ``key`` in every round that measured both."""
    return [r[num][key] / r[den][key] for r in rounds
            if key in r.get(num, {}) and r.get(den, {}).get(key)]


def new_vs_old(rounds: Rounds, old: str, metrics: list[Metric]) -> str:
    """One line per metric: the median over rounds of reconcile / ``old`` and each round's."""
    lines = []
    width = max((len(m.label) for m in metrics), default=0) + len(" (jobs/s)")
    for m in metrics:
        ratios = round_ratios(rounds, BASELINE, old, m.key)
        if not ratios:
            continue
        new, was = median_value(rounds, BASELINE, m.key), median_value(rounds, old, m.key)
        lines.append(f"  {(m.label + ' (' + m.unit + ')').ljust(width)}  "
                     f"{statistics.median(ratios):.3f}  per round "
                     f"{', '.join(f'{x:.3f}' for x in ratios)}  "
                     f"(medians {fmt(new, m.unit)} / {fmt(was, m.unit)})")
    return "\n".join(lines) or "  (no metric measured for both)"


def median_value(rounds: Rounds, system: str, key: str) -> float | None:
    vals = [r[system][key] for r in rounds if key in r.get(system, {})]
    return statistics.median(vals) if vals else None


def median_ratio(rounds: Rounds, system: str, key: str) -> float | None:
    vals = [r[system][key] / r[BASELINE][key] for r in rounds
            if key in r.get(system, {}) and r.get(BASELINE, {}).get(key)]
    return statistics.median(vals) if vals else None


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.2f} ms"
    return f"{value:,.0f}"


def table(rounds: Rounds, systems: list[str], metrics: list[Metric]) -> str:
    head = ["system"] + [f"{m.label} ({m.unit})" for m in metrics]
    rows = [head]
    for name in systems:
        row = [name]
        for m in metrics:
            cell = fmt(median_value(rounds, name, m.key), m.unit)
            ratio = median_ratio(rounds, name, m.key) if name != BASELINE else None
            if ratio is not None and cell != "-":
                cell += f" ({ratio:.2f}x)"
            row.append(cell)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    text: str
    reached: float | None      # the figure compared (a ratio or milliseconds)
    goal: float
    at_least: bool             # True: reached >= goal passes; False: reached <= goal
    unit: str = ""             # "" : "x" for at-least targets (ratios), " ms" otherwise

    @property
    def verdict(self) -> str:
        if self.reached is None:
            return "n/a"
        ok = self.reached >= self.goal if self.at_least else self.reached <= self.goal
        return "MET" if ok else "MISSED"


def vs_fastest_peer(rounds: Rounds, key: str) -> tuple[float | None, str]:
    """Median over rounds of reconcile / fastest peer in that round, and the usual winner."""
    ratios, winners = [], []
    for r in rounds:
        peers = {s: v[key] for s, v in r.items() if is_peer(s) and key in v}
        if peers and key in r.get(BASELINE, {}):
            best = max(peers, key=lambda s: peers[s])
            ratios.append(r[BASELINE][key] / peers[best])
            winners.append(best)
    if not ratios:
        return None, "-"
    return statistics.median(ratios), max(set(winners), key=winners.count)


PASS_GOAL = 100_000.0   # keys/s: 1,000,000 pending rows in 10 s (issue 3)
RECONCILED_GOAL = 3.0   # reconciled drain: reconcile / procrastinate (issue 3)
PG_PEER = "procrastinate"


def measured(rounds: Rounds, key: str) -> bool:
    return any(key in r.get(BASELINE, {}) for r in rounds)


def vs_peer(rounds: Rounds, key: str, peer: str) -> float | None:
    """Median over rounds of reconcile / ``peer`` in the same round."""
    vals = [r[BASELINE][key] / r[peer][key] for r in rounds
            if key in r.get(BASELINE, {}) and r.get(peer, {}).get(key)]
    return statistics.median(vals) if vals else None


def targets(rounds: Rounds) -> list[Target]:
    """The goals whose figures this run measured."""
    out = []
    for key, label, goal in [("drain1", "drain, 1 process", 1.5),
                             ("drain2", "drain, 2 processes", 1.5),
                             ("single", "single enqueue", 1.0), ("bulk", "bulk enqueue", 10.0)]:
        if measured(rounds, key):
            ratio, peer = vs_fastest_peer(rounds, key)
            out.append(Target(f"{label}: reconcile / fastest peer ({peer}) >= {goal:g}x",
                              ratio, goal, True))
    for key, goal in [("p50", 1.0), ("p99", 5.0)]:
        if measured(rounds, key):
            out.append(Target(f"pickup {key} <= {goal:g} ms", median_value(rounds, BASELINE, key),
                              goal, False))
    for key, label in [("pass1", "reconcile pass, first (all enqueued)"),
                       ("pass2", "reconcile pass, second (all already queued)")]:
        if measured(rounds, key):
            out.append(Target(f"{label} >= {PASS_GOAL:,.0f} keys/s",
                              median_value(rounds, BASELINE, key), PASS_GOAL, True, "keys/s"))
    for key, label in [("rdrain1", "reconciled drain, 1 process"),
                       ("rdrain2", "reconciled drain, 2 processes")]:
        if measured(rounds, key):
            out.append(Target(f"{label}: reconcile / {PG_PEER} >= {RECONCILED_GOAL:g}x",
                              vs_peer(rounds, key, PG_PEER), RECONCILED_GOAL, True))
    return out


def targets_text(ts: list[Target]) -> str:
    lines = []
    for t in ts:
        unit = t.unit or ("x" if t.at_least else " ms")
        if t.reached is None:
            got = "-"
        elif unit == "keys/s":
            got = f"{t.reached:,.0f} keys/s"
        else:
            got = f"{t.reached:.2f}{unit}"
        lines.append(f"  {t.verdict:6}  {t.text}: {got}")
    return "\n".join(lines)
