"""Framework tables: schedules, runs, quarantine, switches.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Tables are created without a schema name: they go to the first schema of the
connection's search_path, like the models in reconcile/store/tables.py.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "reconcile_schedules",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("next_run_at", TZ, nullable=False),
        sa.Column("running_owner", sa.Text(), nullable=True),
        sa.Column("running_since", TZ, nullable=True),
        sa.Column("last_started_at", TZ, nullable=True),
        sa.Column("last_finished_at", TZ, nullable=True),
        sa.Column("updated_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "reconcile_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("scheduler", sa.Text(), nullable=False),
        sa.Column("started_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", TZ, nullable=True),
        sa.Column("found", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("enqueued", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("already_queued", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("quarantined", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("disabled", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_reconcile_runs_job_started_at",
        "reconcile_runs",
        ["job", sa.literal_column("started_at DESC")],
    )
    op.create_table(
        "reconcile_quarantine",
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("key", postgresql.JSONB(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("error_class", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("payload", postgresql.JSONB(), nullable=True),
        sa.Column("quarantined_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("job", "key"),
    )
    op.create_table(
        "reconcile_switches",
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("changed_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("job"),
    )


def downgrade() -> None:
    op.drop_table("reconcile_switches")
    op.drop_table("reconcile_quarantine")
    op.drop_index("ix_reconcile_runs_job_started_at", table_name="reconcile_runs")
    op.drop_table("reconcile_runs")
    op.drop_table("reconcile_schedules")
