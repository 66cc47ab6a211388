"""The CLI never silently does nothing with a job class name: every name a command is
given (``JOB``, ``--job``, ``--class``) is checked against the app's registered classes
(``--app``, or the setting ``app``), a unique class name stands for its full name, and
anything else exits with code 2 and the close matches."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from reconcile.cli import main
from reconcile.config import Settings
from reconcile.scheduler.passes import run_pass
from reconcile.store import quarantine, schedules, switches
from tests.reconciled_app import ProcessItem

APP = "tests.reconciled_app"


@pytest.fixture
def engine(app_engine: sa.Engine) -> sa.Engine:
    return app_engine


def run(settings: Settings, *args: str, env: dict[str, str | None] | None = None) -> Result:
    flags = ["--redis-url", settings.redis_url, "--database-url", settings.database_url,
             "--namespace", settings.namespace]
    return CliRunner().invoke(main, [*args, *flags], env={"RECONCILE_APP": None, **(env or {})})


def test_a_unique_class_name_stands_for_its_full_name(pg_settings: Settings, engine: sa.Engine) -> None:
    out = run(pg_settings, "disable", "ProcessItem", "--reason", "incident 42", "--app", APP)
    assert out.exit_code == 0, out.output
    assert out.output.strip() == f"{ProcessItem.job_name} disabled"
    assert switches.all_switches(engine)[ProcessItem.job_name].enabled is False


def test_a_mistyped_name_exits_2_with_the_close_matches_and_changes_nothing(
    pg_settings: Settings, engine: sa.Engine,
) -> None:
    out = run(pg_settings, "disable", "ProcesItem", "--reason", "x", "--app", APP)
    assert out.exit_code == 2
    assert f"'ProcesItem' is not a job class of the app; did you mean {ProcessItem.job_name}" in out.output
    assert switches.all_switches(engine) == {}


@pytest.mark.parametrize("command", [
    ["quarantine", "list", "--job", "NoSuchJob"],
    ["runs", "--job", "NoSuchJob"],
    ["dead", "retry", "--all", "--class", "NoSuchJob"],
    ["quarantine", "release", "--all", "--job", "NoSuchJob"],
    ["enable", "NoSuchJob"],
])
def test_every_option_that_names_a_class_refuses_an_unknown_one(
    pg_settings: Settings, engine: sa.Engine, command: list[str],
) -> None:
    out = run(pg_settings, *command, "--app", APP)
    assert out.exit_code == 2, out.output
    assert "'NoSuchJob' is not a job class of the app" in out.output


def test_the_setting_app_is_used_when_no_app_flag_is_given(pg_settings: Settings, engine: sa.Engine) -> None:
    out = run(pg_settings, "runs", "--job", "ProcessItem", env={"RECONCILE_APP": APP})
    assert out.exit_code == 0, out.output
    bad = run(pg_settings, "disable", "nosuch.module.Job", "--reason", "x",
              env={"RECONCILE_APP": "nosuch_module_xyz"})
    assert bad.exit_code == 2
    assert ("setting app (from environment variable RECONCILE_APP): cannot import "
            "nosuch_module_xyz") in bad.output


def test_the_setting_app_can_live_in_pyproject(
    pg_settings: Settings, engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "pyproject.toml").write_text(f'[tool.reconcile]\napp = "{APP}"\n')
    monkeypatch.chdir(tmp_path)
    out = run(pg_settings, "disable", "ProcessItem", "--reason", "from pyproject")
    assert out.exit_code == 0, out.output
    assert switches.all_switches(engine)[ProcessItem.job_name].reason == "from pyproject"


def test_without_an_app_only_a_full_name_postgresql_knows_is_accepted(
    pg_settings: Settings, engine: sa.Engine,
) -> None:
    switches.set_enabled(engine, ProcessItem.job_name, False, "known")
    out = run(pg_settings, "enable", ProcessItem.job_name)
    assert out.exit_code == 0, out.output
    assert switches.all_switches(engine)[ProcessItem.job_name].enabled is True
    short = run(pg_settings, "disable", "ProcessItem", "--reason", "x")
    assert short.exit_code == 2
    assert "no app module was given to check this job class name against (give --app MODULE" in short.output
    assert f"did you mean {ProcessItem.job_name}" in short.output
    assert switches.all_switches(engine)[ProcessItem.job_name].enabled is True  # unchanged


# -- listings: switches, schedules, and --json on each ------------------------------------


def test_switches_list_shows_state_reason_and_who_and_enable_keeps_the_last_reason(
    pg_settings: Settings, engine: sa.Engine,
) -> None:
    assert run(pg_settings, "disable", "ProcessItem", "--reason", "bad deploy", "--app", APP).exit_code == 0
    assert run(pg_settings, "enable", "ProcessItem", "--app", APP).exit_code == 0
    out = run(pg_settings, "switches", "list")
    assert out.exit_code == 0, out.output
    line = out.output.splitlines()[0]
    assert line.startswith(f"{ProcessItem.job_name} enabled since ")
    assert " by " in line and "(last disabled " in line and ": bad deploy)" in line
    assert out.output.splitlines()[-1] == "0 disabled, 1 with a switch"
    [row] = [json.loads(x) for x in run(pg_settings, "switches", "list", "--json").output.splitlines()]
    assert (row["job"], row["enabled"], row["last_disabled_reason"]) == (
        ProcessItem.job_name, True, "bad deploy")
    assert row["by"] and "@" in row["by"]


def test_schedules_list_and_fire(pg_settings: Settings, engine: sa.Engine) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    schedules.ensure(engine, [schedules.ScheduleSpec(ProcessItem.job_name, "pass", "every 3600s",
                                                     lambda now: later)])
    listed = run(pg_settings, "schedules", "list")
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines()[0].startswith(f"{ProcessItem.job_name} pass every 3600s: next ")
    [row] = [json.loads(x) for x in run(pg_settings, "schedules", "list", "--json").output.splitlines()]
    assert datetime.fromisoformat(row["next_run_at"]) > datetime.now(UTC) + timedelta(minutes=59)

    fired = run(pg_settings, "schedules", "fire", "ProcessItem", "--app", APP)
    assert fired.exit_code == 0, fired.output
    [row] = [json.loads(x) for x in run(pg_settings, "schedules", "list", "--json").output.splitlines()]
    assert datetime.fromisoformat(row["next_run_at"]) <= datetime.now(UTC)
    unscheduled = run(pg_settings, "schedules", "fire", "ForgetfulItem", "--app", APP)
    assert unscheduled.exit_code == 2
    assert "has no schedule row" in unscheduled.output


def test_runs_and_quarantine_list_speak_json(pg_settings: Settings, engine: sa.Engine) -> None:
    run_pass(ProcessItem, settings=pg_settings)
    [r] = [json.loads(x) for x in run(pg_settings, "runs", "--json").output.splitlines()]
    assert (r["job"], r["trigger"], r["found"], r["deferred"]) == (ProcessItem.job_name, "manual", 0, 0)
    quarantine.add(engine, ProcessItem.job_name, (7,), "died", error_class="E", error_message="m")
    [q] = [json.loads(x) for x in run(pg_settings, "quarantine", "list", "--json").output.splitlines()]
    assert (q["job"], q["key"], q["error_class"]) == (ProcessItem.job_name, [7], "E")

