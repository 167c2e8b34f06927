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
