"""Alembic migrations on SQLite: upgrade, downgrade, concurrency, and models in sync."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from persistence.db import dispose_engines, get_engine
from persistence.migrate import alembic_config, upgrade_database
from persistence.models import Base
from tests.support.rows import upgrade_in_processes

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path}/vq.db"
    yield url
    dispose_engines(url)


def _head() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def _revision(url: str) -> str | None:
    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_upgrade_creates_the_schema_and_is_idempotent(sqlite_url: str) -> None:
    upgrade_database(sqlite_url)
    upgrade_database(sqlite_url)
    assert _revision(sqlite_url) == _head()
    tables = set(inspect(get_engine(sqlite_url)).get_table_names())
    assert {"jobs", "webhook_deliveries", "alembic_version"} <= tables


def test_migrations_match_the_models(sqlite_url: str) -> None:
    upgrade_database(sqlite_url)
    with get_engine(sqlite_url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_downgrade_to_base_and_back(sqlite_url: str) -> None:
    upgrade_database(sqlite_url)
    command.downgrade(alembic_config(sqlite_url), "base")
    assert set(inspect(get_engine(sqlite_url)).get_table_names()) == {"alembic_version"}
    upgrade_database(sqlite_url)
    assert _revision(sqlite_url) == _head()


def test_concurrent_upgrades_from_threads(sqlite_url: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            upgrade_database(sqlite_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert _revision(sqlite_url) == _head()


def test_concurrent_upgrades_from_processes(sqlite_url: str) -> None:
    results = upgrade_in_processes(sqlite_url)
    assert [rc for rc, _ in results] == [0, 0], results
    assert _revision(sqlite_url) == _head()


def test_cli_upgrade_and_current(sqlite_url: str) -> None:
    run = [sys.executable, "-m", "persistence", "--url", sqlite_url]
    subprocess.run([*run, "upgrade"], cwd=REPO_ROOT, check=True, timeout=60, capture_output=True)
    current = subprocess.run(
        [*run, "current"], cwd=REPO_ROOT, check=True, timeout=60, capture_output=True, text=True
    )
    assert f"{_head()} (head)" in current.stdout


def test_upgrading_owes_the_events_of_jobs_finished_before_the_outbox(sqlite_url: str) -> None:
    """Jobs finished under 0001 get outbox rows: nothing the old retries carried is lost."""
    from sqlalchemy import text

    upgrade_database(sqlite_url, "0001")
    common = (
        "'k', 'a' , 'image/png', 1, 1, 1, '{}', '', 0, "
        "'2026-11-01 00:00:00.000000', '2026-11-01 00:00:01.000000'"
    )
    with get_engine(sqlite_url).begin() as conn:
        for job_id, status, hook in [
            ("never-sent", "completed", "http://a.example/h"),
            ("delivered", "completed", "https://b.example/h"),
            ("retrying", "failed", "http://a.example:8080/h"),
            ("no-hook", "completed", None),
        ]:
            conn.execute(
                text(
                    "INSERT INTO jobs (id, status, webhook_url, image_key, image_sha256, "
                    "content_type, image_size, width, height, metadata, owner, attempts, "
                    f"created_at, finished_at) VALUES (:id, :status, :hook, {common})"
                ),
                {"id": job_id, "status": status, "hook": hook},
            )
        for job_id, attempt, ok, planned in [
            ("delivered", 1, True, None),
            ("retrying", 2, False, "2026-12-01 00:00:00.000000"),
        ]:
            conn.execute(
                text(
                    "INSERT INTO webhook_deliveries (job_id, event_id, event_type, attempt, "
                    "attempted_at, latency_ms, succeeded, next_attempt_at) VALUES "
                    "(:j, 'e', 't', :a, '2026-11-01 00:00:02.000000', 1.0, :ok, :p)"
                ),
                {"j": job_id, "a": attempt, "ok": ok, "p": planned},
            )
    upgrade_database(sqlite_url)
    with get_engine(sqlite_url).connect() as conn:
        rows = conn.execute(
            text(
                "SELECT job_id, status, attempts, destination, next_attempt_at, event_type "
                "FROM webhook_outbox ORDER BY job_id"
            )
        ).all()
    by_job = {row[0]: row[1:] for row in rows}
    assert set(by_job) == {"never-sent", "delivered", "retrying"}
    assert by_job["delivered"][:2] == ("delivered", 1)
    assert by_job["never-sent"][:3] == ("pending", 0, "http://a.example:80")
    assert by_job["never-sent"][3] is not None  # due now
    assert by_job["retrying"][:3] == ("pending", 2, "http://a.example:8080")
    assert str(by_job["retrying"][3]).startswith("2026-12-01")
    assert by_job["retrying"][4] == "job.failed"


def test_upgrading_moves_batch_events_into_their_outbox_and_back(sqlite_url: str) -> None:
    """Batches ended under 0007 keep their event's state, due time and attempt count."""
    from sqlalchemy import text

    upgrade_database(sqlite_url, "0007")
    with get_engine(sqlite_url).begin() as conn:
        for batch_id, status, hook, state, attempts, due in [
            ("owed", "completed", "http://a.example/h", "owed", 2, "2026-12-01 00:00:00.000000"),
            ("sent", "cancelled", "https://b.example/h", "delivered", 1, None),
            ("given-up", "failed", "http://c.example:81/h", "exhausted", 12, None),
            ("no-hook", "completed", None, None, 0, None),
        ]:
            conn.execute(
                text(
                    "INSERT INTO batches (id, owner, status, source, output, top_k, metadata, "
                    "webhook_url, created_at, finished_at, webhook_state, webhook_attempts, "
                    "webhook_next_at) VALUES (:id, '', :status, 'file:///d/', 'file:///o/', 5, "
                    "'{}', :hook, '2026-11-01 00:00:00.000000', '2026-11-01 00:00:01.000000', "
                    ":state, :attempts, :due)"
                ),
                {
                    "id": batch_id,
                    "status": status,
                    "hook": hook,
                    "state": state,
                    "attempts": attempts,
                    "due": due,
                },
            )
        conn.execute(
            text(
                "INSERT INTO batch_chunks (batch_id, seq, keys, size, status, lines) "
                "VALUES ('owed', 0, 'a.jpg', 1, 'done', '{}')"
            )
        )
    upgrade_database(sqlite_url)
    with get_engine(sqlite_url).connect() as conn:
        # no table copy dropped the batches (and cascaded to their chunks)
        assert conn.execute(text("SELECT COUNT(*) FROM batch_chunks")).scalar() == 1
        rows = conn.execute(
            text(
                "SELECT batch_id, status, attempts, destination, next_attempt_at, event_type "
                "FROM batch_webhook_outbox"
            )
        ).all()
    by_batch = {row[0]: row[1:] for row in rows}
    assert set(by_batch) == {"owed", "sent", "given-up"}
    assert by_batch["owed"][:3] == ("pending", 2, "http://a.example:80")
    assert str(by_batch["owed"][3]).startswith("2026-12-01")
    assert by_batch["sent"] == ("delivered", 1, "https://b.example:443", None, "batch.cancelled")
    assert by_batch["given-up"][:2] == ("exhausted", 12)
    assert by_batch["given-up"][4] == "batch.failed"

    command.downgrade(alembic_config(sqlite_url), "0007")
    with get_engine(sqlite_url).connect() as conn:
        back = conn.execute(
            text("SELECT id, webhook_state, webhook_attempts FROM batches ORDER BY id")
        ).all()
    assert [tuple(row) for row in back] == [
        ("given-up", "exhausted", 12),
        ("no-hook", None, 0),
        ("owed", "owed", 2),
        ("sent", "delivered", 1),
    ]
