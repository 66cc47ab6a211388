"""Settings sources end to end: a ``reconcile`` command reads flags over environment
over ``[tool.reconcile]`` (needs Redis: ``status`` connects)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconcile.cli import main


def write_pyproject(folder: Path, body: str) -> Path:
    path = folder / "pyproject.toml"
    path.write_text("[project]\nname = 'app'\n\n[tool.reconcile]\n" + textwrap.dedent(body))
    return path


def _status_namespace(args: list[str], env: dict[str, str]) -> str:
    result = CliRunner().invoke(main, ["status", "--json", *args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return str(json.loads(result.output)["namespace"])


def test_cli_flags_beat_env_beat_pyproject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    write_pyproject(tmp_path, f'namespace = "cfgfile"\nredis_url = "{redis_url}"\n')
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("RECONCILE_")]:
        monkeypatch.delenv(name)
    assert _status_namespace([], {}) == "cfgfile"
    assert _status_namespace([], {"RECONCILE_NAMESPACE": "cfgenv"}) == "cfgenv"
    assert _status_namespace(["--namespace", "cfgflag"], {"RECONCILE_NAMESPACE": "cfgenv"}) == "cfgflag"
