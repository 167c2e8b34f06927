"""A throwaway PostgreSQL database on the local server, for tests and the benchmark."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from persistence.db import dispose_engines

# Server-level URL; each test gets its own database on it. TEST_POSTGRES_ADMIN_URL points
# elsewhere (not VQ_*: tests/conftest.py clears those).
DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def postgres_admin_url() -> str:
    """Return the URL of the maintenance database new test databases are created from."""
    return os.environ.get("TEST_POSTGRES_ADMIN_URL", DEFAULT_PG_ADMIN_URL)


@contextmanager
def throwaway_postgres_url(admin_url: str | None = None) -> Iterator[str]:
    """Create an empty database ``vq_test_<random>``, yield its URL, then drop it."""
    admin = make_url(admin_url or postgres_admin_url())
    name = f"vq_test_{uuid.uuid4().hex[:16]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = admin.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        dispose_engines(url)
        with engine.connect() as conn:
            # FORCE ends sessions left behind (threads, child processes of the test).
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        engine.dispose()
