"""Webhook outbox, job leases and maintenance locks.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 13:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_timestamp = sa.DateTime(timezone=True)
LOCK_NAMES = ("sweep", "purge")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_until", _timestamp, nullable=True))
        batch.add_column(sa.Column("leased_by", sa.String(128), nullable=True))

    op.create_table(
        "webhook_outbox",
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("destination", sa.String(300), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("series_start", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", _timestamp, nullable=True),
        sa.Column("claimed_until", _timestamp, nullable=True),
        sa.Column("relayed_at", _timestamp, nullable=True),
        sa.Column("redelivered_at", _timestamp, nullable=True),
        sa.Column("created_at", _timestamp, nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'exhausted')",
            name=op.f("ck_webhook_outbox_status"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_webhook_outbox_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_webhook_outbox")),
    )
    op.create_index(
        op.f("ix_webhook_outbox_status_next_attempt_at"),
        "webhook_outbox",
        ["status", "next_attempt_at"],
    )
    op.create_index(
        op.f("ix_webhook_outbox_destination_claimed_until"),
        "webhook_outbox",
        ["destination", "claimed_until"],
    )

    locks = op.create_table(
        "maintenance_locks",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(128), nullable=True),
        sa.Column("expires_at", _timestamp, nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_maintenance_locks")),
    )
    op.bulk_insert(
        locks, [{"name": name, "holder": None, "expires_at": None} for name in LOCK_NAMES]
    )


def downgrade() -> None:
    op.drop_table("maintenance_locks")
    op.drop_index(op.f("ix_webhook_outbox_destination_claimed_until"), table_name="webhook_outbox")
    op.drop_index(op.f("ix_webhook_outbox_status_next_attempt_at"), table_name="webhook_outbox")
    op.drop_table("webhook_outbox")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("leased_by")
        batch.drop_column("lease_until")
