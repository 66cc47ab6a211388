"""Settings: flags > environment > [tool.reconcile] > defaults; bad values name the setting."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconcile import config
from reconcile.cli import main
from reconcile.config import Settings, find_pyproject, load_settings
from reconcile.errors import ConfigError


@pytest.fixture(autouse=True)
def keep_process_settings() -> Iterator[None]:
    saved = config._current
    yield
    config._current = saved


def write_pyproject(folder: Path, body: str) -> Path:
    path = folder / "pyproject.toml"
    path.write_text("[project]\nname = 'app'\n\n[tool.reconcile]\n" + textwrap.dedent(body))
    return path


def test_defaults() -> None:
    s = load_settings({}, env={}, pyproject=False)
    assert s == Settings()
    assert (s.redis_url, s.namespace, s.concurrency, s.lease_seconds) == (
        "redis://localhost:6379/0", "reconcile", 10, 20.0)
    assert s.effective_prefetch == 10


def test_precedence_flags_over_env_over_pyproject_over_defaults(tmp_path: Path) -> None:
    path = write_pyproject(tmp_path, """
        namespace = "fromfile"
        concurrency = 4
        lease-seconds = 7
        dead_max_jobs = 50
    """)
    env = {"RECONCILE_CONCURRENCY": "6", "RECONCILE_NAMESPACE": "fromenv", "OTHER": "x"}
    s = load_settings({"namespace": "fromflag", "prefetch": None}, env=env, pyproject=path)
    assert s.namespace == "fromflag"  # flag beats env and file
    assert s.concurrency == 6  # env beats file
    assert s.lease_seconds == 7.0 and s.dead_max_jobs == 50  # file beats default (dash or underscore)
    assert s.prefetch == 0  # a None flag (unset) leaves the lower layers alone
    assert s.poll_interval == Settings().poll_interval


def test_nearest_pyproject_is_found_from_a_subfolder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pyproject(tmp_path, 'namespace = "nearest"\n')
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert find_pyproject() == tmp_path / "pyproject.toml"
    assert load_settings(env={}).namespace == "nearest"


def test_env_values_are_coerced(tmp_path: Path) -> None:
    s = load_settings(env={"RECONCILE_LEASE_SECONDS": "2.5", "RECONCILE_MAX_RECOVERIES": "0",
                           "RECONCILE_LOG_LEVEL": "debug"}, pyproject=False)
    assert s.lease_seconds == 2.5 and s.max_recoveries == 0 and s.log_level == "debug"


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({"RECONCILE_CONCURRENCY": "many"}, ["'concurrency'", "RECONCILE_CONCURRENCY", "int", "'many'"]),
        ({"RECONCILE_CONCURRENCY": "2.5"}, ["'concurrency'", "int"]),
        ({"RECONCILE_CONCURRENCY": "0"}, ["'concurrency'", "at least 1", "RECONCILE_CONCURRENCY"]),
        ({"RECONCILE_LEASE_SECONDS": "-1"}, ["'lease_seconds'", "positive"]),
        ({"RECONCILE_POLL_INTERVAL": "soon"}, ["'poll_interval'", "float"]),
        ({"RECONCILE_PREFETCH": "-3"}, ["'prefetch'", "negative"]),
        ({"RECONCILE_REDIS_URL": "http://x"}, ["'redis_url'", "redis://"]),
        ({"RECONCILE_DATABASE_URL": "mysql://x"}, ["'database_url'", "PostgreSQL"]),
        ({"RECONCILE_NAMESPACE": "a{b}"}, ["'namespace'", "braces"]),
        ({"RECONCILE_NAMESPACE": "a:b"}, ["'namespace'", "colons"]),
        ({"RECONCILE_NAMESPACE": ""}, ["'namespace'", "non-empty"]),
        ({"RECONCILE_LOG_LEVEL": "LOUD"}, ["'log_level'", "DEBUG"]),
        ({"RECONCILE_MAX_PAYLOAD_BYTES": "0"}, ["'max_payload_bytes'"]),
    ],
)
def test_bad_env_values_raise_naming_setting_and_source(env: dict[str, str], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env, pyproject=False)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ("concurrency = 2.5\n", ["'concurrency'", "[tool.reconcile] in"]),
        ("concurrency = true\n", ["'concurrency'", "int"]),
        ("namespace = 5\n", ["'namespace'", "str"]),
        ("dead_max_jobs = 0\n", ["'dead_max_jobs'", "at least 1", "[tool.reconcile] in"]),
        ("lease_secs = 3\n", ["unknown setting 'lease_secs'", "pyproject.toml"]),
    ],
)
def test_bad_pyproject_values_raise_naming_setting_and_file(
    tmp_path: Path, body: str, fragments: list[str]
) -> None:
    path = write_pyproject(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, pyproject=path)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_bad_code_values_raise() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'concurency'"):
        load_settings({"concurency": 3}, env={}, pyproject=False)
    with pytest.raises(ConfigError, match=r"'shutdown_timeout'.*code or command line"):
        load_settings({"shutdown_timeout": -1}, env={}, pyproject=False)
    with pytest.raises(ConfigError, match="'concurrency'"):
        Settings().with_overrides(concurrency=0)


def test_settings_are_frozen_and_hashable() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.concurrency = 3  # type: ignore[misc]
    assert hash(s) == hash(Settings())


def test_every_setting_documents_its_default() -> None:
    tree = ast.parse(textwrap.dedent(inspect.getsource(Settings)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    undocumented = []
    for node, after in zip(body, [*body[1:], None], strict=True):
        if isinstance(node, ast.AnnAssign):
            name = node.target.id  # type: ignore[attr-defined]
            doc = after.value.value if isinstance(after, ast.Expr) else ""
            if "Default" not in str(doc):
                undocumented.append(name)
    assert undocumented == []
    assert len([n for n in body if isinstance(n, ast.AnnAssign)]) == len(dataclasses.fields(Settings))


def test_the_settings_page_lists_every_field_with_its_environment_variable() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "settings.md").read_text()
    rows = {}
    for line in page.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and cells[2].startswith("`RECONCILE_"):
            rows[cells[0].strip("`")] = cells[2].strip("`")
    fields = {f.name: f"RECONCILE_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    assert rows == fields


# -- through the command line --------------------------------------------------------------


def test_cli_reports_a_bad_setting_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["status"], env={"RECONCILE_LEASE_SECONDS": "forever"})
    assert result.exit_code == 2
    assert "lease_seconds" in result.output and "RECONCILE_LEASE_SECONDS" in result.output


# -- numbers, URLs, malformed files, masking ----------------------------------------------


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({"RECONCILE_LEASE_SECONDS": "nan"},
         ["'lease_seconds'", "finite", "'nan'", "RECONCILE_LEASE_SECONDS"]),
        ({"RECONCILE_POLL_INTERVAL": "inf"}, ["'poll_interval'", "finite", "'inf'"]),
        ({"RECONCILE_SHUTDOWN_TIMEOUT": "-inf"}, ["'shutdown_timeout'", "finite"]),
        ({"RECONCILE_DEAD_MAX_JOBS": "1e400"}, ["'dead_max_jobs'", "int"]),
        ({"RECONCILE_LEASE_SECONDS": "0.1"}, ["'lease_seconds'", "at least 0.5"]),
        ({"RECONCILE_IDLE_WAIT": "0"}, ["'idle_wait'", "positive"]),
        ({"RECONCILE_REDIS_URL": "redis://h:6379/abc"}, ["'redis_url'", "database number", "'redis://h:6379/abc'"]),
        ({"RECONCILE_REDIS_URL": "redis://h:port/0"}, ["'redis_url'", "port"]),
        ({"RECONCILE_REDIS_URL": "redis+sentinel://h:26379/0"},
         ["'redis_url'", "Sentinel service", "mymaster/0", "RECONCILE_REDIS_URL"]),
        ({"RECONCILE_REDIS_URL": "redis+cluster://h:7000/0"},
         ["'redis_url'", "redis://, rediss://, unix://, redis+sentinel://", "RECONCILE_REDIS_URL"]),
        ({"RECONCILE_REDIS_URL": "unix://"}, ["'redis_url'", "socket path"]),
        ({"RECONCILE_DATABASE_URL": "postgresql+psycopg://h:port/db"}, ["'database_url'", "valid URL"]),
    ],
)
def test_numbers_must_be_finite_and_urls_must_parse(env: dict[str, str], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env, pyproject=False)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_good_redis_urls_are_accepted() -> None:
    for url in ("redis://h:6379/0", "redis://h", "redis://h:6379/", "rediss://u:p@h:6380/15",
                "unix:///run/redis.sock?db=2"):
        assert load_settings({"redis_url": url}, env={}, pyproject=False).redis_url == url


def test_code_values_name_code_as_their_source() -> None:
    with pytest.raises(ConfigError, match=r"'poll_interval' from code .*finite"):
        Settings().with_overrides(poll_interval=float("nan"))


def test_malformed_pyproject_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text("[project]\nname = 'app'\n\n[tool.reconcile]\nnamespace = \n")
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, pyproject=path)
    message = str(info.value)
    assert str(path) in message and "line 5" in message and "column" in message


def test_tool_reconcile_must_be_a_table(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text("[tool]\nreconcile = 3\n")
    with pytest.raises(ConfigError, match=r"\[tool.reconcile\] .* must be a table"):
        load_settings(env={}, pyproject=path)


def test_passwords_are_masked_in_errors_and_repr() -> None:
    assert config.mask_url("redis://:pw1@h:6379/0") == "redis://:***@h:6379/0"
    assert config.mask_url("rediss://user:pw1@h/0?password=pw2") == "rediss://user:***@h/0?password=***"
    assert config.mask_url("postgresql+psycopg://u:pw1@h:5432/db") == "postgresql+psycopg://u:***@h:5432/db"
    assert config.mask_url("redis://h:6379/0") == "redis://h:6379/0"
    with pytest.raises(ConfigError) as info:
        load_settings(env={"RECONCILE_REDIS_URL": "redis://:topsecret@h:6379/x"}, pyproject=False)
    assert "topsecret" not in str(info.value) and "redis://:***@h:6379/x" in str(info.value)
    s = load_settings({"redis_url": "redis://:topsecret@h/0",
                       "database_url": "postgresql+psycopg://u:topsecret@h/db"}, env={}, pyproject=False)
    assert "topsecret" not in repr(s) and "redis://:***@h/0" in repr(s)
    assert config.scrub("driver said topsecret", s) == "driver said ***"


def test_settings_remember_where_each_value_came_from(tmp_path: Path) -> None:
    path = write_pyproject(tmp_path, 'namespace = "f"\n')
    s = load_settings({"concurrency": 3}, env={"RECONCILE_REDIS_URL": "redis://h/0"}, pyproject=path,
                      overrides_source="command line")
    assert s.source_of("redis_url") == "environment variable RECONCILE_REDIS_URL"
    assert s.source_of("namespace") == f"[tool.reconcile] in {path}"
    assert s.source_of("concurrency") == "command line"
    assert s.source_of("idle_wait") == "default"
    copy = s.with_overrides(idle_wait=1.0)
    assert copy.source_of("redis_url") == "environment variable RECONCILE_REDIS_URL"
    assert s == load_settings({"concurrency": 3}, env={"RECONCILE_REDIS_URL": "redis://h/0"}, pyproject=path)


def test_cli_reports_a_bad_setting_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["status"], env={"RECONCILE_POLL_INTERVAL": "inf"})
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "reconcile: setting 'poll_interval' from environment variable RECONCILE_POLL_INTERVAL "
        "must be a finite number, got 'inf'"]


@pytest.mark.parametrize(("raw", "want"), [("false", False), ("off", False), ("0", False), ("yes", True)])
def test_fast_paths_is_a_boolean_from_the_environment(raw: str, want: bool) -> None:
    s = load_settings({}, env={"RECONCILE_FAST_PATHS": raw}, pyproject=False)
    assert s.fast_paths is want
    assert s.source_of("fast_paths") == "environment variable RECONCILE_FAST_PATHS"
    assert load_settings({}, env={}, pyproject=False).fast_paths is True, "on by default"


def test_a_fast_paths_value_that_is_not_a_boolean_is_refused_naming_its_source() -> None:
    with pytest.raises(ConfigError, match=r"'fast_paths' from environment variable RECONCILE_FAST_PATHS"):
        load_settings({}, env={"RECONCILE_FAST_PATHS": "sometimes"}, pyproject=False)


# -- poolers and driver arguments (issue 12, item 1) -------------------------------------------

@pytest.mark.parametrize("mode", ["none", "session", "transaction"])
def test_database_pooler_takes_its_three_modes_from_the_environment(mode: str) -> None:
    settings = load_settings(env={"RECONCILE_DATABASE_POOLER": mode}, pyproject=False)
    assert settings.database_pooler == mode


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({"RECONCILE_DATABASE_POOLER": "pgbouncer"},
         ["'database_pooler'", "RECONCILE_DATABASE_POOLER", "none, session, transaction", "'pgbouncer'"]),
        ({"RECONCILE_DATABASE_PREPARE_THRESHOLD": "-1"},
         ["'database_prepare_threshold'", "whole number >= 0 or none"]),
        ({"RECONCILE_DATABASE_PREPARE_THRESHOLD": "often"}, ["'database_prepare_threshold'"]),
        ({"RECONCILE_DATABASE_URL": "postgresql+psycopg://h/db?prepare_threshold=x"},
         ["'database_url'", "prepare_threshold='x'", "none or a whole number"]),
        ({"RECONCILE_DATABASE_URL": "postgresql+psycopg://h/db?connect_timeout=0"},
         ["'database_url'", "connect_timeout='0'"]),
        ({"RECONCILE_DATABASE_URL": "postgresql+psycopg://h/db?options=-csearch_path%3Ds",
          "RECONCILE_DATABASE_POOLER": "transaction"},
         ["'database_url'", "options", "ALTER ROLE", "database_pooler is 'transaction'"]),
    ],
)
def test_bad_pooler_settings_raise_naming_the_culprit(env: dict[str, str], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env, pyproject=False)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_options_are_fine_without_a_pooler() -> None:
    url = "postgresql+psycopg://h/db?options=-csearch_path%3Ds"
    assert load_settings({"database_url": url}, env={}, pyproject=False).database_url == url


@pytest.mark.parametrize(("raw", "want"), [(0, "0"), (7, "7"), ("none", "none"), ("NONE", "NONE")])
def test_prepare_threshold_accepts_ints_from_code_and_none(raw: object, want: str) -> None:
    settings = load_settings({"database_prepare_threshold": raw}, env={}, pyproject=False)
    assert settings.database_prepare_threshold == want
    assert config.prepare_threshold_value(want) == (None if want.lower() == "none" else int(want))


def test_driver_arguments_come_from_the_url_first_then_the_settings() -> None:
    from reconcile.store.engine import driver_arguments

    base = "postgresql+psycopg://u@h:5432/db"
    plain = load_settings({"database_url": base, "database_application_name": "shop-worker",
                           "database_connect_timeout": 4.5}, env={}, pyproject=False)
    url, args = driver_arguments(plain)
    assert url.query == {}
    assert args == {"connect_timeout": 4, "application_name": "shop-worker", "prepare_threshold": 5}

    query = base + "?prepare_threshold=none&connect_timeout=2&application_name=from-url"
    url, args = driver_arguments(plain.with_overrides(database_url=query))
    # prepare_threshold leaves the URL (psycopg takes it as an argument); the others stay
    # in the conninfo, where libpq reads them, and the settings add nothing over them
    assert dict(url.query) == {"connect_timeout": "2", "application_name": "from-url"}
    assert args == {"prepare_threshold": None}

    url, args = driver_arguments(plain.with_overrides(database_url=base + "?prepare_threshold=0",
                                                      database_pooler="transaction"))
    assert args["prepare_threshold"] is None  # transaction pooling prepares nothing
