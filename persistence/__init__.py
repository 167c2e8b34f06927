"""Persistence: SQLAlchemy models, Alembic migrations, job repository and image storage."""
