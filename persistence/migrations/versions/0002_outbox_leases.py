"""Webhook outbox, job leases and maintenance locks.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 13:00:00
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import urlsplit

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
    _owe_events_of_finished_jobs()


def _event_id(job_id: str, event_type: str) -> str:
    # frozen copy of visionqueue.core.webhook_events.event_id_for (once jobs.webhooks.events): a revision must not change with it
    return f"evt_{uuid.uuid5(uuid.NAMESPACE_URL, f'visionqueue:{job_id}:{event_type}').hex}"


def _destination(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"[:300]


def _owe_events_of_finished_jobs() -> None:
    """Give every finished job with a webhook its outbox row, from its delivery log.

    Delivered once: delivered. A retry planned in the log: pending at that time. Anything
    else (no attempt yet, or a retry that lived only in a broker countdown): pending now,
    so the new relay sends it; a receiver may see a duplicate, never a loss.
    """
    bind = op.get_bind()
    now = datetime.now(UTC)
    jobs = bind.execute(
        sa.text(
            "SELECT id, status, webhook_url FROM jobs "
            "WHERE webhook_url IS NOT NULL AND webhook_url != '' "
            "AND status IN ('completed', 'failed')"
        )
    ).all()
    log = bind.execute(
        sa.text(
            "SELECT job_id, MAX(attempt), MAX(CASE WHEN succeeded THEN 1 ELSE 0 END), "
            "MAX(next_attempt_at) FROM webhook_deliveries GROUP BY job_id"
        )
    ).all()
    by_job = {row[0]: row[1:] for row in log}
    outbox = sa.table(
        "webhook_outbox",
        sa.column("job_id"),
        sa.column("event_id"),
        sa.column("event_type"),
        sa.column("destination"),
        sa.column("status"),
        sa.column("attempts"),
        sa.column("series_start"),
        sa.column("next_attempt_at", _timestamp),
        sa.column("created_at", _timestamp),
    )
    rows = []
    for job_id, status, url in jobs:
        event_type = "job.completed" if status == "completed" else "job.failed"
        attempts, delivered, planned = by_job.get(job_id, (0, 0, None))
        if isinstance(planned, str):  # SQLite hands back text
            planned = datetime.fromisoformat(planned)
        if planned is not None and planned.tzinfo is None:
            planned = planned.replace(tzinfo=UTC)
        rows.append(
            {
                "job_id": job_id,
                "event_id": _event_id(job_id, event_type),
                "event_type": event_type,
                "destination": _destination(url),
                "status": "delivered" if delivered else "pending",
                "attempts": int(attempts or 0),
                "series_start": 0,
                "next_attempt_at": None if delivered else _stored(planned or now, bind),
                "created_at": _stored(now, bind),
            }
        )
    for start in range(0, len(rows), 1000):
        op.bulk_insert(outbox, rows[start : start + 1000])


def _stored(value: datetime, bind: sa.engine.Connection) -> datetime:
    # the models store UTC without a zone on SQLite (text compares in order)
    value = value.astimezone(UTC)
    return value.replace(tzinfo=None) if bind.dialect.name == "sqlite" else value


def downgrade() -> None:
    op.drop_table("maintenance_locks")
    op.drop_index(op.f("ix_webhook_outbox_destination_claimed_until"), table_name="webhook_outbox")
    op.drop_index(op.f("ix_webhook_outbox_status_next_attempt_at"), table_name="webhook_outbox")
    op.drop_table("webhook_outbox")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("leased_by")
        batch.drop_column("lease_until")
