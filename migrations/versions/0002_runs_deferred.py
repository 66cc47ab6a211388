"""reconcile_runs.deferred: keys a pass left for the next one (back-pressure).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

Adding a column with a constant default is a catalog-only change in PostgreSQL 11+
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


def downgrade() -> None:
    op.drop_column("reconcile_runs", "deferred")
