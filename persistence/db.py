"""Build one SQLAlchemy engine per process and URL; open sessions; map driver errors.

The caller owns the transaction: repository functions only ``flush``; ``session_scope``
commits when its block ends without an exception and rolls back otherwise.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from visionqueue.core.errors import DatabaseUnavailable

# Writers wait this long for SQLite's single write lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10

_engines: dict[tuple[str, int], Engine] = {}
_engines_lock = threading.Lock()


def get_engine(url: str) -> Engine:
    """Return this process's engine for ``url``, creating it on first use."""
    pid = os.getpid()
    with _engines_lock:
        # Entries of another pid were inherited through fork: never touch their pools here.
        for key in [key for key in _engines if key[1] != pid]:
            del _engines[key]
        engine = _engines.get((url, pid))
        if engine is None:
            engine = _create_engine(url)
            _engines[(url, pid)] = engine
        return engine


def dispose_engines(url: str | None = None) -> None:
    """Close the pooled connections of this process's engine for ``url`` (or all) and forget it."""
    pid = os.getpid()
    with _engines_lock:
        keys = [key for key in _engines if key[1] == pid and url in (None, key[0])]
        engines = [_engines.pop(key) for key in keys]
    for engine in engines:
        engine.dispose()


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _create_sqlite_engine(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    # Worker threads each hold a connection while they run: size the pool above the default 5.
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args
    )


def _create_sqlite_engine(url: str) -> Engine:
    parsed = make_url(url)
    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    kwargs: dict[str, Any] = {
        "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    }
    if in_memory:
        # One shared connection, otherwise every thread would see its own empty database.
        kwargs["poolclass"] = StaticPool
    else:
        # A failure here shows up on first connect, mapped to DatabaseUnavailable.
        with contextlib.suppress(OSError):
            path = Path(database).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            # jobs, owners and webhook URLs: only our user reads them (SQLite gives its
            # -wal and -shm files the database file's mode)
            path.touch(mode=0o600, exist_ok=True)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            if not in_memory:
                # WAL lets readers proceed while one of the many worker threads writes.
                _enable_wal(cursor)
                cursor.execute("PRAGMA synchronous = NORMAL")
            # ON DELETE CASCADE of webhook deliveries needs foreign keys enforced.
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    return engine


_UNAVAILABLE_ERRORS = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
)


def _enable_wal(cursor: Any, attempts: int = 50) -> None:
    """Switch a SQLite file to WAL (persistent), waiting out a concurrent writer.

    Changing the journal mode needs an exclusive lock that SQLite's busy handler does not
    always wait for: two processes opening a fresh database at once (``make run``'s
    migration and the worker's) could fail with "database is locked".
    """
    import sqlite3

    for attempt in range(attempts):
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.1)


@contextmanager
def db_errors() -> Iterator[None]:
    """Map connection, lock and pool errors raised inside the block to ``DatabaseUnavailable``."""
    try:
        yield
    except _UNAVAILABLE_ERRORS as exc:
        raise DatabaseUnavailable("the database is unavailable, retry later") from exc


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """Open a session in a transaction: commit on success, roll back on error."""
    with db_errors(), Session(engine, expire_on_commit=False) as session, session.begin():
        yield session
