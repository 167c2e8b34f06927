"""Job rows, migrated databases and schema upgrades for tests on any database URL."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from persistence import deliveries_repo, jobs_repo
from persistence.db import dispose_engines, get_engine, session_scope
from persistence.migrate import upgrade_database
from persistence.models import Job

ROOT = Path(__file__).resolve().parents[2]


def job_fields(**overrides: Any) -> dict[str, Any]:
    """Return the fields of a valid job with a fresh (fake) content key; override any."""
    digest = uuid.uuid4().hex * 2
    fields: dict[str, Any] = {
        "image_key": f"images/{digest[:2]}/{digest}",
        "image_sha256": digest,
        "content_type": "image/png",
        "image_size": 1234,
        "width": 32,
        "height": 24,
        "metadata": {"source": "test"},
    }
    fields.update(overrides)
    return fields


def add_job(session: Session, **overrides: Any) -> Job:
    """Insert a valid pending job in ``session``'s transaction (``job_fields`` + overrides)."""
    return jobs_repo.create_job(session, **job_fields(**overrides))


def create_job_row(engine: Engine, **overrides: Any) -> str:
    """Insert one job in its own transaction; return its id."""
    with session_scope(engine) as session:
        return add_job(session, **overrides).id


@contextmanager
def migrated_sqlite(folder: Path) -> Iterator[Engine]:
    """Yield the engine of a SQLite file in ``folder`` at the latest schema; dispose it after.

    ``str(engine.url)`` is the URL to hand to settings or to another process.
    """
    url = f"sqlite:///{folder / 'vq.db'}"
    upgrade_database(url)
    try:
        yield get_engine(url)
    finally:
        dispose_engines(url)


def record_attempt(engine: Engine, job_id: str, attempt: int, **overrides: Any) -> None:
    """Record one delivery attempt of ``job_id``'s completion event (succeeded, 200); override any."""
    fields: dict[str, Any] = {
        "event_id": "msg_1",
        "event_type": "job.completed",
        "succeeded": True,
        "latency_ms": 4.2,
        "status_code": 200,
    }
    fields.update(overrides)
    with session_scope(engine) as session:
        deliveries_repo.record_attempt(session, subject_id=job_id, attempt=attempt, **fields)


def upgrade_in_processes(url: str, count: int = 2) -> list[tuple[int, str]]:
    """Run ``upgrade_database(url)`` in ``count`` processes at once; (exit code, output) each."""
    code = "import sys; from persistence.migrate import upgrade_database; upgrade_database(sys.argv[1])"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(count)
    ]
    return [_collect(proc) for proc in procs]


def _collect(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    output = proc.communicate(timeout=60)[0].decode()
    return proc.returncode, output
