"""Throwaway backends for integration tests: a fresh Postgres database, a moto S3 server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from persistence.db import dispose_engines
from persistence.images import S3ImageStore

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


class MotoS3(NamedTuple):
    endpoint: str
    access_key: str
    secret_key: str


@contextmanager
def moto_s3_server() -> Iterator[MotoS3]:
    """Run an in-memory S3 server on a free loopback port; yield (endpoint, keys)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield MotoS3(f"http://{host}:{port}", "vq-test-access", "vq-test-secret")
    finally:
        server.stop()
        # stop() leaves the socket listening: close it so later clients are refused at once.
        listener: Any = getattr(server, "_server", None)
        if listener is not None:
            listener.server_close()


def s3_image_store(s3: MotoS3, bucket: str = "vq-test-images", **kwargs: Any) -> S3ImageStore:
    """Build an ``S3ImageStore`` on ``s3`` with short timeouts (no bucket created yet)."""
    kwargs.setdefault("timeout_s", 2.0)
    kwargs.setdefault("retries", 1)
    return S3ImageStore(s3.endpoint, s3.access_key, s3.secret_key, bucket, **kwargs)
