"""Promotions live in the database (``model_promotions``), shared by every classifier replica.

A promotion record left by an earlier release in ``VQ_DATA_DIR/model-promotions.json`` is
copied in, so an upgrade keeps serving the promoted versions.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 05:20:00
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEGACY_RECORD = "model-promotions.json"


def _legacy_entries() -> list[dict[str, Any]]:
    path = Path(os.environ.get("VQ_DATA_DIR", ".vq-data")) / LEGACY_RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    models = record.get("models") if isinstance(record, dict) else None
    if not isinstance(models, dict):
        return []
    now = datetime.now(UTC)
    return [
        {
            "name": str(name),
            "tag": str(entry["tag"]),
            "previous": entry.get("previous"),
            "sequence": int(entry.get("sequence", 0)),
            "promoted_at": now,
        }
        for name, entry in models.items()
        if isinstance(entry, dict) and entry.get("tag")
    ]


def upgrade() -> None:
    table = op.create_table(
        "model_promotions",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("tag", sa.String(255), nullable=False),
        sa.Column("previous", sa.String(255), nullable=True),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_model_promotions")),
    )
    legacy = _legacy_entries()
    if legacy and op.get_bind().dialect.name == "sqlite":
        for row in legacy:  # the models' UTCDateTime keeps SQLite's values zone-less
            row["promoted_at"] = row["promoted_at"].replace(tzinfo=None)
    if legacy:
        op.bulk_insert(table, legacy)


def downgrade() -> None:
    op.drop_table("model_promotions")
