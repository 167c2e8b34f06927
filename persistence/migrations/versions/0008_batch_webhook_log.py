"""Batches get the jobs' webhook outbox and delivery log (their own tables, the same columns).

The end-of-batch event lived on the batch row (``webhook_state``, ``webhook_attempts``,
``webhook_next_at``, ``webhook_last_error``): it moves to ``batch_webhook_outbox``, and
every attempt from now on is logged in ``batch_webhook_deliveries``. Owed events stay due
when they were; attempts made before this revision are counted, not listed.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 09:00:00
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import urlsplit

import sqlalchemy as sa
from alembic import op

from persistence.models import UTCDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATES = {"owed": "pending", "delivered": "delivered", "exhausted": "exhausted"}


def upgrade() -> None:
    op.create_table(
        "batch_webhook_outbox",
        sa.Column("batch_id", sa.String(36), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("destination", sa.String(300), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("series_start", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.Column("relayed_at", UTCDateTime(), nullable=True),
        sa.Column("redelivered_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'exhausted')",
            name=op.f("ck_batch_webhook_outbox_status"),
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_batch_webhook_outbox_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("batch_id", name=op.f("pk_batch_webhook_outbox")),
    )
    op.create_index(
        op.f("ix_batch_webhook_outbox_status_next_attempt_at"),
        "batch_webhook_outbox",
        ["status", "next_attempt_at"],
    )
    op.create_index(
        op.f("ix_batch_webhook_outbox_destination_claimed_until"),
        "batch_webhook_outbox",
        ["destination", "claimed_until"],
    )
    op.create_table(
        "batch_webhook_deliveries",
        sa.Column("batch_id", sa.String(36), nullable=False),
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("attempted_at", UTCDateTime(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_batch_webhook_deliveries_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_webhook_deliveries")),
    )
    op.create_index(
        op.f("ix_batch_webhook_deliveries_batch_id"), "batch_webhook_deliveries", ["batch_id"]
    )
    _move_events_off_the_batch_rows()
    # ALTER TABLE ... DROP COLUMN, also on SQLite (3.35+): a batch-mode table copy would
    # drop ``batches`` and, with foreign keys on, cascade to every chunk and the new outbox
    for column in ("webhook_last_error", "webhook_next_at", "webhook_attempts", "webhook_state"):
        op.drop_column("batches", column)


def _event_id(batch_id: str, event_type: str) -> str:
    # frozen copy of visionqueue.core.webhook_events.event_id_for
    return f"evt_{uuid.uuid5(uuid.NAMESPACE_URL, f'visionqueue:{batch_id}:{event_type}').hex}"


def _destination(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"[:300]


def _outbox_table() -> sa.TableClause:
    return sa.table(
        "batch_webhook_outbox",
        sa.column("batch_id"),
        sa.column("event_id"),
        sa.column("event_type"),
        sa.column("destination"),
        sa.column("status"),
        sa.column("attempts"),
        sa.column("series_start"),
        sa.column("next_attempt_at", UTCDateTime()),
        sa.column("created_at", UTCDateTime()),
    )


def _move_events_off_the_batch_rows() -> None:
    bind = op.get_bind()
    batches = sa.table(
        "batches",
        sa.column("id"),
        sa.column("status"),
        sa.column("webhook_url"),
        sa.column("finished_at", UTCDateTime()),
        sa.column("webhook_state"),
        sa.column("webhook_attempts"),
        sa.column("webhook_next_at", UTCDateTime()),
    )
    owed = bind.execute(
        sa.select(batches).where(
            batches.c.webhook_state.is_not(None), batches.c.webhook_url.is_not(None)
        )
    ).all()
    now = datetime.now(UTC)
    rows = []
    for row in owed:
        event_type = f"batch.{row.status}"
        status = _STATES.get(row.webhook_state, "pending")
        rows.append(
            {
                "batch_id": row.id,
                "event_id": _event_id(row.id, event_type),
                "event_type": event_type,
                "destination": _destination(row.webhook_url),
                "status": status,
                "attempts": int(row.webhook_attempts or 0),
                "series_start": 0,
                "next_attempt_at": (row.webhook_next_at or now) if status == "pending" else None,
                "created_at": row.finished_at or now,
            }
        )
    outbox = _outbox_table()
    for start in range(0, len(rows), 1000):
        bind.execute(sa.insert(outbox), rows[start : start + 1000])


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("webhook_state", sa.String(16), nullable=True))
        batch.add_column(
            sa.Column("webhook_attempts", sa.Integer(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("webhook_next_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("webhook_last_error", sa.String(64), nullable=True))
    bind = op.get_bind()
    outbox = sa.table(
        "batch_webhook_outbox",
        sa.column("batch_id"),
        sa.column("status"),
        sa.column("attempts"),
        sa.column("next_attempt_at", UTCDateTime()),
    )
    batches = sa.table(
        "batches",
        sa.column("id"),
        sa.column("webhook_state"),
        sa.column("webhook_attempts"),
        sa.column("webhook_next_at", UTCDateTime()),
    )
    back = {value: key for key, value in _STATES.items()}
    for row in bind.execute(sa.select(outbox)).all():
        bind.execute(
            sa.update(batches)
            .where(batches.c.id == row.batch_id)
            .values(
                webhook_state=back[row.status],
                webhook_attempts=row.attempts,
                webhook_next_at=row.next_attempt_at,
            )
        )
    op.drop_table("batch_webhook_deliveries")
    op.drop_table("batch_webhook_outbox")
