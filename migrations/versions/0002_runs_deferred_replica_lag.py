"""reconcile_runs.deferred (keys a pass left for the next one: back-pressure) and
reconcile_runs.replica_lag_ms (lag of the read replica a pass scanned), and the
switch history of reconcile_switches (who changed it, the last reason it was disabled
for and when, kept when it is enabled again).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

Adding columns with a constant default (or none) is a catalog-only change in PostgreSQL 11+
(no table rewrite), so the upgrade is instant on a long history.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "reconcile_runs",
        sa.Column("deferred", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("reconcile_runs", sa.Column("replica_lag_ms", sa.Integer(), nullable=True))
    op.add_column("reconcile_switches", sa.Column("changed_by", sa.Text(), nullable=True))
    op.add_column("reconcile_switches", sa.Column("last_disabled_reason", sa.Text(), nullable=True))
    op.add_column("reconcile_switches",
                  sa.Column("last_disabled_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("reconcile_switches", "last_disabled_at")
    op.drop_column("reconcile_switches", "last_disabled_reason")
    op.drop_column("reconcile_switches", "changed_by")
    op.drop_column("reconcile_runs", "replica_lag_ms")
    op.drop_column("reconcile_runs", "deferred")
