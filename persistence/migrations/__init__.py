"""Alembic environment and revisions of the VisionQueue schema (run via ``persistence.migrate``)."""
