"""Apply migrations when a worker starts, so a worker never runs against an old schema."""

from __future__ import annotations

from persistence.migrate import upgrade_database
from visionqueue.settings import Settings


def migrate_on_start(settings: Settings) -> None:
    """Upgrade the database to the newest revision (a no-op when current)."""
    upgrade_database(settings.database_url)
