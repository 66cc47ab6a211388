"""``python -m benchmarks``: reconcile against its peers, interleaved in rounds."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

from . import check, pg, report
from .common import BASE_URL, CONTROL_DB, FULL, QUICK, Sizes, claim_db, cpu_model, url
from .scenarios import BY_NAME as SCENARIO_BY_NAME
from .scenarios import DEFAULT as DEFAULT_SCENARIOS
from .scenarios import Context, Metric, Scenario
from .systems import ALL as SYSTEMS
from .systems import BASELINE, BY_NAME, System
from .systems.reconcile_ref import ReconcileHere, ReconcileRef


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small N, 1 round: a smoke test")
    p.add_argument("--rounds", type=int, help="rounds (default 3, or 1 with --quick)")
    p.add_argument("--only", help="comma-separated systems, e.g. reconcile,rq (default all)")
    p.add_argument("--scenarios", help=f"comma-separated, default {','.join(DEFAULT_SCENARIOS)}")
    p.add_argument("--json", type=Path, help="write every figure to this file")
    p.add_argument("--logdir", type=Path, help="worker logs (default: a temp directory)")
    p.add_argument("--pass-rows", type=int, metavar="N",
                   help="pending rows of the reconcile pass (default 1,000,000, or 100,000 with --quick)")
    p.add_argument("--drain", type=int, metavar="N",
                   help="drain jobs, every system (default 30,000, or 3,000 with --quick)")
    p.add_argument("--rdrain", type=int, metavar="N",
                   help="reconciled-drain jobs, every system (default 6,000, or 1,000 with --quick)")
    p.add_argument("--against", metavar="GIT_REF",
                   help="also run reconcile at this commit, as system reconcile@GIT_REF, in the "
                        "same rounds; the summary adds new / old ratios")
    p.add_argument("--check", action="store_true",
                   help="only check that every adapter uses the harness's service URLs, then exit")
    return p.parse_args(argv)


def machine() -> dict[str, Any]:
    cpu = cpu_model()
    info = redis.Redis.from_url(url(CONTROL_DB)).info("server")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "redis": info.get("redis_version"), "redis_url": BASE_URL,
            "platform": platform.platform()}


def version(system: System) -> str:
    if isinstance(system, ReconcileHere):
        return "this working tree, driven from an agent"
    if isinstance(system, ReconcileRef):
        return f"at {system.commit[:12]}"  # the installed distribution is the current code's
    try:
        return metadata.version(system.package)
    except metadata.PackageNotFoundError:
        return "?"


def open_systems(names: list[str], say: Any, claim: bool = True,
                 against: str | None = None) -> tuple[list[System], dict[str, str]]:
    opened: list[System] = []
    missing: dict[str, str] = {}
    chosen: list[System] = []
    for cls in SYSTEMS:
        if cls.name == BASELINE and against and cls.name in names:
            # old and new are both driven from an agent process, so that the ratio
            # between them measures reconcile, not where its client runs
            chosen.append(ReconcileHere())
        elif cls.name in names:
            chosen.append(cls())
        if cls.name == BASELINE and against:
            chosen.append(ReconcileRef(against))  # beside the current code, in every round
    for system in chosen:
        try:
            system.open()
        except ImportError as exc:
            missing[system.name] = f"not installed ({exc.name or exc})"
            say(f"  {system.name}: missing ({exc})")
            continue
        if isinstance(system, ReconcileHere):
            say(f"  {system.name}: this working tree, reconcile from "
                f"{system.driver_reconcile} (driver side, in its agent)")
        elif isinstance(system, ReconcileRef):
            say(f"  {system.name}: commit {system.commit[:12]}, reconcile from "
                f"{system.driver_reconcile} (driver side, in its agent)")
        if system.uses_redis and claim:
            claim_db(system.db)
        opened.append(system)
    return opened, missing


def run_round(i: int, systems: list[System], scenarios: list[Scenario], ctx: Context,
              errors: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {s.name: {} for s in systems}
    order = systems if i % 2 == 0 else list(reversed(systems))  # cancel slow drifts
    for scenario in scenarios:
        for system in order:
            if all(scenario.skip_reason(system, m) for m in scenario.metrics):
                continue
            t = time.monotonic()
            try:
                got = scenario.run(system, ctx)
            except Exception as exc:
                errors.setdefault(system.name, []).append(f"round {i + 1} {scenario.name}: {exc}")
                ctx.say(f"  {system.name} {scenario.name}: FAILED {exc}")
                if os.environ.get("BENCH_DEBUG"):
                    traceback.print_exc()
                continue
            figures[system.name].update(got)
            shown = ", ".join(f"{k}={v:,.2f}" if v < 100 else f"{k}={v:,.0f}"
                              for k, v in got.items())
            ctx.say(f"  {system.name} {scenario.name}: {shown} [{time.monotonic() - t:.1f}s]")
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sizes: Sizes = QUICK if args.quick else FULL
    if args.pass_rows:
        sizes = dataclasses.replace(sizes, pass_rows=args.pass_rows)
    if args.drain:
        sizes = dataclasses.replace(sizes, drain=args.drain)
    if args.rdrain:
        sizes = dataclasses.replace(sizes, rdrain=args.rdrain)
    rounds = args.rounds or (1 if args.quick else 3)
    names = args.only.split(",") if args.only else [c.name for c in SYSTEMS]
    unknown = set(names) - set(BY_NAME)
    if unknown:
        sys.exit(f"unknown systems: {', '.join(sorted(unknown))}; known: {', '.join(BY_NAME)}")
    chosen = args.scenarios.split(",") if args.scenarios else DEFAULT_SCENARIOS
    scenarios = []
    for name in chosen:
        sc = SCENARIO_BY_NAME.get(name)
        if sc is None:
            sys.exit(f"unknown scenario {name!r}; known: {', '.join(SCENARIO_BY_NAME)}")
        if not sc.implemented:
            print(f"scenario {name!r} is not implemented yet; skipped")
            continue
        scenarios.append(sc)
    logdir = args.logdir or Path(tempfile.mkdtemp(prefix="reconcile-bench-"))
    logdir.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        print(text, flush=True)

    if args.check:
        return check_only(names, say, args.against)
    say(f"reconcile benchmarks: {rounds} round(s), sizes {sizes}, worker logs in {logdir}")
    systems, missing = open_systems(names, say, against=args.against)
    bad = check.problems(systems)
    if bad:
        for s in systems:
            s.close()
        sys.exit("adapters not on the harness's URLs:\n" + "\n".join(f"  {b}" for b in bad))
    ctx = Context(sizes=sizes, logdir=logdir, say=say)
    errors: dict[str, list[str]] = {}
    all_rounds: report.Rounds = []
    started = time.monotonic()
    try:
        for i in range(rounds):
            # Other work on the machine shows here; ratios within a round absorb most of it.
            say(f"round {i + 1}/{rounds} (load average {os.getloadavg()[0]:.1f})")
            all_rounds.append(run_round(i, systems, scenarios, ctx, errors))
    finally:
        for s in systems:
            s.close()
        for sc in scenarios:
            close = getattr(sc, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    say(f"  {sc.name}: cleanup failed: {exc}")
    summary = summarize(all_rounds, systems, scenarios, missing, errors)
    say(summary)
    say(f"total {time.monotonic() - started:.0f}s")
    if args.json:
        dump(args.json, sizes, rounds, all_rounds, systems, scenarios, missing, errors)
    return 0


def check_only(names: list[str], say: Any, against: str | None) -> int:
    """``--check``: the URLs every adapter uses; 1 if one is not the harness's."""
    systems, missing = open_systems(names, say, claim=False, against=against)
    try:
        say(f"harness: BENCH_REDIS={BASE_URL}, BENCH_DATABASE={pg.BASE_URL}")
        say(check.report(systems))
        bad = check.problems(systems)
    finally:
        for s in systems:
            s.close()
    for name, why in missing.items():
        say(f"  {name}: {why}")
    say("\n".join(f"MISMATCH {b}" for b in bad) if bad else
        f"every adapter uses the harness's URLs ({len(systems)} checked, {len(missing)} missing)")
    return 1 if bad else 0


def metrics_of(scenarios: list[Scenario]) -> list[Metric]:
    return [m for s in scenarios for m in s.metrics]


def sections(scenarios: list[Scenario]) -> list[list[Metric]]:
    """Metrics grouped by the scenarios' ``section`` (default "redis"), in order."""
    out: dict[str, list[Metric]] = {}
    for sc in scenarios:
        out.setdefault(getattr(sc, "section", "redis"), []).extend(sc.metrics)
    return list(out.values())


def summarize(rounds: report.Rounds, systems: list[System], scenarios: list[Scenario],
              missing: dict[str, str], errors: dict[str, list[str]]) -> str:
    out = ["", "Figures: median over rounds; (Nx) = peer / reconcile in the same round, "
           "median over rounds. Higher is better for jobs/s and keys/s, lower for ms."]
    for metrics in sections(scenarios):
        keys = {m.key for m in metrics}
        shown = [s.name for s in systems if any(k in r.get(s.name, {}) for r in rounds for k in keys)]
        if shown:
            out += ["", report.table(rounds, shown, metrics)]
    left_out: dict[tuple[str, str], list[str]] = {}  # (metric labels, reason) -> systems
    for sc in scenarios:
        for s in systems:
            skipped = [m for m in sc.metrics if sc.skip_reason(s, m)]
            if len(skipped) == len(sc.metrics):
                continue  # the system takes no part in this scenario at all
            for reason in dict.fromkeys(str(sc.skip_reason(s, m)) for m in skipped):
                labels = " / ".join(m.label for m in skipped if sc.skip_reason(s, m) == reason)
                left_out.setdefault((labels, reason), []).append(s.name)
    notes = [f"  {labels}: {', '.join(names)} left out: {reason}"
             for (labels, reason), names in left_out.items()]
    notes += [f"  {name}: {why}" for name, why in missing.items()]
    notes += [f"  {name}: {e}" for name, errs in errors.items() for e in errs]
    if notes:
        out += ["", "Notes:", *notes]
    if BASELINE in [s.name for s in systems]:
        out += ["", "Targets (reconcile):", report.targets_text(report.targets(rounds))]
    for s in systems:
        if s.family == BASELINE and s.name != BASELINE:
            out += ["", f"New / old: {BASELINE} / {s.name}, within each round "
                    "(jobs/s and keys/s: above 1 is faster; ms: below 1 is faster)",
                    report.new_vs_old(rounds, s.name, metrics_of(scenarios))]
    out += ["", "Configurations:"]
    for s in systems:
        if s.uses_redis and any(getattr(sc, "section", "redis") == "redis" for sc in scenarios):
            out.append(f"  {s.name} {version(s)}: {s.config}")
        if s.pg_config and any(getattr(sc, "section", "redis") == "reconciled" for sc in scenarios):
            out.append(f"  {s.name} {version(s)} (reconciled): {s.pg_config}")
    return "\n".join(out)


def dump(path: Path, sizes: Sizes, n: int, rounds: report.Rounds, systems: list[System],
         scenarios: list[Scenario], missing: dict[str, str], errors: dict[str, list[str]]) -> None:
    metrics = metrics_of(scenarios)
    data = {
        "machine": machine(), "sizes": sizes.__dict__, "rounds": n, "raw": rounds,
        "systems": {s.name: {"version": version(s), "config": s.config,
                             "reconciled_config": s.pg_config or None,
                             "bulk_api": s.bulk_api or None} for s in systems},
        "median": {s.name: {m.key: report.median_value(rounds, s.name, m.key) for m in metrics}
                   for s in systems},
        "ratio_to_reconcile": {s.name: {m.key: report.median_ratio(rounds, s.name, m.key)
                                        for m in metrics} for s in systems},
        "targets": [{"target": t.text, "reached": t.reached, "verdict": t.verdict}
                    for t in report.targets(rounds)],
        "new_vs_old": {s.name: {m.key: report.round_ratios(rounds, BASELINE, s.name, m.key)
                                for m in metrics}
                       for s in systems if s.family == BASELINE and s.name != BASELINE},
        "missing": missing, "errors": errors,
    }
    path.write_text(json.dumps(data, indent=2))
