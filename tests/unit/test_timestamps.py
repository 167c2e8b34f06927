"""Instants reach clients as ISO 8601 in UTC with a Z."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from visionqueue.core.timestamps import iso_z


def test_aware_instants_are_written_in_utc_with_a_z() -> None:
    instant = datetime(2026, 11, 30, 14, 0, 0, 123000, tzinfo=UTC)
    assert iso_z(instant) == "2026-11-30T14:00:00.123000Z"
    east = instant.astimezone(timezone(timedelta(hours=2)))
    assert iso_z(east) == "2026-11-30T14:00:00.123000Z"
