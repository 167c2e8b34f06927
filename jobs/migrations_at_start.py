"""Prepare a worker at start-up: broker folders, then migrations (never an old schema)."""

from __future__ import annotations

from persistence.migrate import upgrade_database
from visionqueue.core.settings import Settings


def migrate_on_start(settings: Settings) -> None:
    """Create the embedded broker's folders and upgrade the database (a no-op when current)."""
    from jobs.celery_app import ensure_broker_dirs

    ensure_broker_dirs(settings)
    upgrade_database(settings.database_url)
