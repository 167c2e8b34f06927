"""Batches record whether their part files are in the project's own store (retention).

A batch submitted without an ``output`` writes ``batches/ID/`` in the image bucket or under
``VQ_DATA_DIR``: the retention purge deletes those part files with the batch. Rows from
before this revision are marked by that path (an id nobody can name before submitting).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 09:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "batches",
        sa.Column("output_owned", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    batches = sa.table(
        "batches",
        sa.column("id", sa.String()),
        sa.column("output", sa.Text()),
        sa.column("output_owned", sa.Boolean()),
    )
    default_output = sa.literal("%/batches/") + batches.c.id + sa.literal("/")
    op.execute(
        batches.update().where(batches.c.output.like(default_output)).values(output_owned=True)
    )


def downgrade() -> None:
    # a plain DROP COLUMN: a batch-mode table copy would cascade to the chunks on SQLite
    op.drop_column("batches", "output_owned")
