"""Migrate the database schema with Alembic, from code: no alembic.ini anywhere.

Services call ``upgrade_database(url)`` at start-up; several processes may do so at once.
Developers use the same configuration from the command line::

    python -m persistence upgrade                       # VQ_DATABASE_URL, else the SQLite default
    python -m persistence --url postgresql+psycopg://... current
    python -m persistence revision -m "add jobs.priority" --autogenerate
    python -m persistence history
    python -m persistence downgrade -1

A new revision lands in ``persistence/migrations/versions/``; read it and clean it up by hand.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from persistence.db import db_errors, get_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any fixed 64-bit number works; every VisionQueue process must use the same one.
MIGRATION_LOCK_KEY = 0x5651_4D49_4752_4154  # "VQMIGRAT"


def alembic_config(url: str, connection: Connection | None = None) -> Config:
    """Build the Alembic configuration for ``url`` in code."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Passed as attributes, not options: configparser would choke on '%' in a password.
    config.attributes["url"] = url
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_database(url: str, revision: str = "head") -> None:
    """Upgrade the schema at ``url`` to ``revision`` while holding the migration lock."""
    with db_errors(), get_engine(url).connect() as connection:
        _take_migration_lock(connection)
        command.upgrade(alembic_config(url, connection), revision)
        connection.commit()


def _take_migration_lock(connection: Connection) -> None:
    """Start the transaction the migration runs in, serialised across processes."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        # Transaction-scoped: released by the commit or rollback that ends the upgrade.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    elif dialect == "sqlite":
        # Take SQLite's write lock before reading alembic_version; a second process waits
        # (busy_timeout) and then finds the schema already at head.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
