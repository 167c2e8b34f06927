"""How instants are written for clients: ISO 8601 in UTC with a ``Z`` (``2026-11-30T14:00:00Z``)."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_z(value: datetime) -> str:
    """Return ``value`` as ISO 8601, an aware one in UTC with ``Z`` for the zone."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z")
