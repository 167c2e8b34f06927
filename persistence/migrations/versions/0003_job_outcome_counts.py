"""Running totals of finished jobs (image_task_* on the front's /metrics).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 13:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_outcome_counts",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", "label", name=op.f("pk_job_outcome_counts")),
    )
    # jobs that finished before this revision count too
    op.execute(
        "INSERT INTO job_outcome_counts (name, label, value) "
        "SELECT 'success', '', COUNT(*) FROM jobs WHERE status = 'completed' HAVING COUNT(*) > 0"
    )
    op.execute(
        "INSERT INTO job_outcome_counts (name, label, value) "
        "SELECT 'failure', COALESCE(error_code, ''), COUNT(*) FROM jobs "
        "WHERE status = 'failed' GROUP BY COALESCE(error_code, '')"
    )


def downgrade() -> None:
    op.drop_table("job_outcome_counts")
