"""The alert rules and the Grafana dashboard of docs/ are valid and use only metrics
that docs/metrics.md documents: ``promtool check rules`` and ``promtool test rules``
(docs/prometheus/alerts.test.yml) where promtool is installed (Debian's ``prometheus``
package; .ci/run installs it, so CI never skips these)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
RULES = DOCS / "prometheus" / "alerts.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"),
    reason="promtool not installed (apt-get install prometheus; .ci/run does)")


def documented() -> set[str]:
    return set(re.findall(r"`(reconcile_[a-z_]+)(?:\{[^`]*\})?`", (DOCS / "metrics.md").read_text()))


def used(text: str) -> set[str]:
    names = set(re.findall(r"\b(reconcile_[a-z_]+)", text))
    # histogram series are documented by their family name
    return {re.sub(r"_(bucket|count|sum)$", "", n) if n.endswith(("_bucket", "_count", "_sum")) else n
            for n in names}


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    out = subprocess.run([PROMTOOL or "promtool", "check", "rules", str(RULES)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_each_alert_fires_on_its_series_and_not_on_healthy_ones() -> None:
    out = subprocess.run([PROMTOOL or "promtool", "test", "rules", "alerts.test.yml"],
                         cwd=RULES.parent, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_is_tested_and_has_a_runbook_entry() -> None:
    alerts = re.findall(r"- alert: (\w+)", RULES.read_text())
    tested = set(re.findall(r"alertname: (\w+)", (RULES.parent / "alerts.test.yml").read_text()))
    runbook = (DOCS / "operations.md").read_text()
    assert len(alerts) >= 6
    for alert in alerts:
        assert f"### {alert}" in runbook, f"docs/operations.md has no runbook entry for {alert}"
    untested = set(alerts) - tested - {"ReconcilePassesFailing", "ReconcileMetricsSourceDown"}
    assert not untested, f"alerts without a promtool test: {sorted(untested)}"


def test_the_rules_and_the_dashboard_use_documented_metrics_only() -> None:
    known = documented()
    assert "reconcile_lag_seconds" in known and "reconcile_jobs_total" in known
    dashboard = (DOCS / "grafana" / "reconcile.json").read_text()
    json.loads(dashboard)  # valid JSON
    for source, text in (("alerts.yml", RULES.read_text()), ("grafana/reconcile.json", dashboard)):
        unknown = used(text) - known
        assert not unknown, f"{source} uses metrics docs/metrics.md does not document: {sorted(unknown)}"
