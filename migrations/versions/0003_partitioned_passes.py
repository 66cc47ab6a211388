"""Partitioned passes: the key bounds and their generation on reconcile_schedules, the
generation and key count each partition's last pass scanned, and which partition a
run of reconcile_runs covered.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

Adding nullable columns, or columns with a constant default, is a catalog-only change
in PostgreSQL 11+ (no table rewrite): the upgrade is instant on a long history. Rows
of existing schedules keep working unchanged: a class with one partition never reads
the new columns.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("reconcile_schedules", sa.Column("bounds", postgresql.JSONB(), nullable=True))
    op.add_column(
        "reconcile_schedules",
        sa.Column("bounds_gen", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("reconcile_schedules", sa.Column("scanned_gen", sa.BigInteger(), nullable=True))
    op.add_column("reconcile_schedules", sa.Column("scanned_keys", sa.BigInteger(), nullable=True))
    op.add_column("reconcile_runs", sa.Column("partition_index", sa.Integer(), nullable=True))
    op.add_column("reconcile_runs", sa.Column("partition_count", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("reconcile_runs", "partition_count")
    op.drop_column("reconcile_runs", "partition_index")
    op.drop_column("reconcile_schedules", "scanned_keys")
    op.drop_column("reconcile_schedules", "scanned_gen")
    op.drop_column("reconcile_schedules", "bounds_gen")
    op.drop_column("reconcile_schedules", "bounds")
