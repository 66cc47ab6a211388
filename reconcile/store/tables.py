"""The framework tables, as SQLAlchemy Core.

No table names a schema: they are created in, and read from, the first schema of the
connection's ``search_path`` (``public`` by default), like the application's own
tables. Migrations in ``migrations/versions`` must produce exactly this metadata;
``tests/integration/test_migrations.py`` checks it.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData()

TZ = sa.DateTime(timezone=True)

schedules = sa.Table(
    "reconcile_schedules",
    metadata,
    # A job's registry name (its reconcile pass) or "cron:<name>" (a cron entry).
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),  # 'pass' | 'cron'
    sa.Column("spec", sa.Text, nullable=False),  # "every 60s", "cron */5 * * * * Europe/Paris"
    sa.Column("next_run_at", TZ, nullable=False),
    sa.Column("running_owner", sa.Text, nullable=True),
    sa.Column("running_since", TZ, nullable=True),
    sa.Column("last_started_at", TZ, nullable=True),
    sa.Column("last_finished_at", TZ, nullable=True),
    sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
    # Partitioned passes (migration 0003, store/partitions.py). On the row of partition 0
    # (named like the job): the key bounds that split the class's keys into ranges, as
    # a JSON array of keys in canonical form, and their generation. On every partition
    # row: the generation its last completed pass scanned, and how many keys it found.
    sa.Column("bounds", JSONB(none_as_null=True), nullable=True),
    sa.Column("bounds_gen", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("scanned_gen", sa.BigInteger, nullable=True),
    sa.Column("scanned_keys", sa.BigInteger, nullable=True),
)

runs = sa.Table(
    "reconcile_runs",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
    sa.Column("job", sa.Text, nullable=False),
    # 'tick' | 'manual' | 'redis_loss' | 'flush' | 'startup'
    sa.Column("trigger", sa.Text, nullable=False),
    sa.Column("scheduler", sa.Text, nullable=False),  # owner id of the scheduler process
    sa.Column("started_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("finished_at", TZ, nullable=True),
    sa.Column("found", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("enqueued", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("already_queued", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("quarantined", sa.Integer, nullable=False, server_default=sa.text("0")),
    # keys left for the next pass by back-pressure (high water reached): migration 0002
    sa.Column("deferred", sa.Integer, nullable=False, server_default=sa.text("0")),
    # lag of the read replica the pass scanned (pending_database_url), NULL without one
    sa.Column("replica_lag_ms", sa.Integer, nullable=True),
    # the key range of a partitioned pass: partition_index of partition_count (0-based),
    # NULL for a pass over every key (migration 0003)
    sa.Column("partition_index", sa.Integer, nullable=True),
    sa.Column("partition_count", sa.Integer, nullable=True),
    sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("duration_ms", sa.Integer, nullable=True),
)
sa.Index("ix_reconcile_runs_job_started_at", runs.c.job, runs.c.started_at.desc())

quarantine = sa.Table(
    "reconcile_quarantine",
    metadata,
    sa.Column("job", sa.Text, primary_key=True),
    # The key as a JSON array ([42], [7, "eu"]): one type for keys of any arity.
    sa.Column("key", JSONB, primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("error_class", sa.Text, nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    # none_as_null: a missing payload is SQL NULL, not the JSON value null.
    sa.Column("payload", JSONB(none_as_null=True), nullable=True),
    sa.Column("quarantined_at", TZ, nullable=False, server_default=sa.func.now()),
)

switches = sa.Table(
    "reconcile_switches",
    metadata,
    sa.Column("job", sa.Text, primary_key=True),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("changed_at", TZ, nullable=False, server_default=sa.func.now()),
    # who changed it (user@host of the CLI, when known), and the last time and reason it
    # was disabled, kept when it is enabled again: migration 0002
    sa.Column("changed_by", sa.Text, nullable=True),
    sa.Column("last_disabled_reason", sa.Text, nullable=True),
    sa.Column("last_disabled_at", TZ, nullable=True),
)
