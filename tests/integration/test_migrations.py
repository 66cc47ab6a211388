"""Migrations: they build exactly the models, in the URL's schema, beside the app's own.

* upgrading an empty schema to head yields tables identical to ``reconcile.store.tables``
  (alembic's autogenerate finds no difference);
* downgrading to base leaves no reconcile table behind;
* the application's ``alembic_version`` table is never read or written;
* tables land in the first schema of the URL's search_path, not in ``public``;
* concurrent upgrades of one database both succeed.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from reconcile.errors import ConfigError
from reconcile.store import migrate
from reconcile.store.tables import metadata


def tables_in(url: str, schema: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names(schema=schema))
    finally:
        engine.dispose()


def test_upgraded_schema_matches_the_models(schema_url: str) -> None:
    migrate.upgrade(schema_url)

    engine = sa.create_engine(schema_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "version_table": migrate.VERSION_TABLE,
                "compare_type": True,
                "compare_server_default": True,
            },
        )
        diff = compare_metadata(context, metadata)
    engine.dispose()

    assert diff == []


def test_upgrade_creates_the_tables_in_the_urls_schema(schema_url: str, pg_schema: str) -> None:
    migrate.upgrade(schema_url)

    assert tables_in(schema_url, pg_schema) == {*metadata.tables, migrate.VERSION_TABLE}
    assert migrate.current(schema_url) == migrate.heads()[0]


def test_current_is_none_before_any_upgrade(schema_url: str) -> None:
    assert migrate.current(schema_url) is None


def test_upgrade_twice_is_a_no_op(schema_url: str) -> None:
    migrate.upgrade(schema_url)
    migrate.upgrade(schema_url)

    assert migrate.current(schema_url) == migrate.heads()[0]


def test_downgrade_to_base_leaves_no_reconcile_table(schema_url: str, pg_schema: str) -> None:
    migrate.upgrade(schema_url)

    migrate.downgrade(schema_url, "base")

    assert {t for t in tables_in(schema_url, pg_schema) if t.startswith("reconcile_")} == set()
    assert migrate.current(schema_url) is None


def test_the_applications_alembic_version_is_left_alone(schema_url: str, pg_schema: str) -> None:
    engine = sa.create_engine(schema_url)
    app_version = sa.Table(
        "alembic_version", sa.MetaData(),
        sa.Column("version_num", sa.String(32), primary_key=True),
    )
    with engine.begin() as conn:
        app_version.create(conn)
        conn.execute(app_version.insert().values(version_num="app_rev_42"))

    migrate.upgrade(schema_url)
    assert migrate.current(schema_url) == migrate.heads()[0]
    migrate.downgrade(schema_url, "base")

    with engine.connect() as conn:
        assert conn.execute(sa.select(app_version.c.version_num)).scalars().all() == ["app_rev_42"]
    engine.dispose()
    assert "alembic_version" in tables_in(schema_url, pg_schema)


def test_concurrent_upgrades_from_several_processes_all_succeed(
    schema_url: str, pg_schema: str
) -> None:
    # Several pods running `reconcile db upgrade` at once at deploy time. Each process
    # imports first, then waits for a line on stdin, so that the upgrades overlap.
    code = (
        "import sys; from reconcile.store import migrate; "
        "sys.stdin.readline(); migrate.upgrade(sys.argv[1])"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, schema_url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(b"go\n")
    for p in procs:
        assert p.stdin is not None
        p.stdin.flush()
    outputs = [p.communicate()[0].decode() for p in procs]
    failures = [out for p, out in zip(procs, outputs, strict=True) if p.returncode != 0]

    assert failures == []
    assert migrate.current(schema_url) == migrate.heads()[0]
    assert set(metadata.tables) <= tables_in(schema_url, pg_schema)


def test_concurrent_upgrades_from_threads_of_one_process_all_succeed(schema_url: str) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def upgrade() -> None:
        start.wait()
        try:
            migrate.upgrade(schema_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upgrade) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert migrate.current(schema_url) == migrate.heads()[0]


def test_a_search_path_without_an_existing_schema_is_refused(database_url: str) -> None:
    sep = "&" if "?" in database_url else "?"
    url = f"{database_url}{sep}options=-csearch_path%3Dno_such_schema_xyz"

    with pytest.raises(ConfigError, match="search_path"):
        migrate.upgrade(url)


def test_heads_is_the_single_latest_revision() -> None:
    assert migrate.heads() == ["0003"]


def test_the_installed_wheel_layout_is_preferred(tmp_path: Path) -> None:
    package = tmp_path / "site-packages" / "reconcile"
    (package / "_migrations").mkdir(parents=True)
    (package / "_migrations" / "env.py").write_text("")
    (tmp_path / "site-packages" / "migrations").mkdir()
    (tmp_path / "site-packages" / "migrations" / "env.py").write_text("")

    assert migrate.migrations_dir(package) == package / "_migrations"


def test_the_source_tree_layout_is_found(tmp_path: Path) -> None:
    package = tmp_path / "repo" / "reconcile"
    package.mkdir(parents=True)
    (tmp_path / "repo" / "migrations").mkdir()
    (tmp_path / "repo" / "migrations" / "env.py").write_text("")

    assert migrate.migrations_dir(package) == tmp_path / "repo" / "migrations"
    assert migrate.migrations_dir().joinpath("versions").is_dir()


def test_missing_migrations_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="migrations not found"):
        migrate.migrations_dir(tmp_path / "reconcile")
