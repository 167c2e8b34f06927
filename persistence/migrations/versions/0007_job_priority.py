"""Jobs keep the priority they were submitted with (``priority`` form field of ``/v1/jobs``).

``high`` and ``normal`` run in the ``jobs`` class of work, ``low`` in ``bulk``
(``visionqueue.dataplane.priority``); rows from before this revision are ``normal``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 05:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("priority", sa.String(8), nullable=False, server_default="normal")
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("priority")
