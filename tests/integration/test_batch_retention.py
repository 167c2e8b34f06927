"""Batch retention on SQLite and a real PostgreSQL: finished batches past the retention go,
with their result lines and the part files in the project's own store; the client's own
output, batches still running, recent ones and owed webhook events stay."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, update

from jobs.batches.retention import batch_retention_days, purge_expired_batches
from persistence import batches_repo
from persistence.batch_sources import default_output, part_name
from persistence.db import session_scope
from persistence.models import Batch, BatchChunk, BatchWebhookOutbox, new_job_id, utcnow
from tests.integration.batches_factories import migrated_engine
from visionqueue.core.settings import BatchSettings, DatabaseSettings, Settings, WorkerSettings

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with migrated_engine(request.param, tmp_path) as engine:
        yield engine


def settings_for(engine: Engine, tmp_path: Path, **batch: object) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database=DatabaseSettings(url=engine.url.render_as_string(hide_password=False)),
        worker=WorkerSettings(retention_days=30),
        batch=BatchSettings(local_roots=[str(tmp_path / "client")], **batch),  # type: ignore[arg-type]
    )


def ended_batch(
    engine: Engine,
    settings: Settings,
    days_ago: float,
    output: str | None = None,
    status: str = "completed",
    webhook_url: str | None = None,
) -> tuple[str, Path]:
    """A batch of two chunks that ended ``days_ago``, its two part files written."""
    batch_id = new_job_id()
    out = output or default_output(batch_id, settings)
    with session_scope(engine) as session:
        batches_repo.create_batch(
            session,
            batch_id=batch_id,
            source="file:///d/",
            output=out,
            owner=None,
            model_name=None,
            top_k=1,
            metadata=None,
            webhook_url=webhook_url,
            output_owned=output is None,
        )
        assert batches_repo.add_chunks(session, batch_id, 0, [["a"], ["b"]])
    for _ in range(2):
        with session_scope(engine) as session:
            chunk = batches_repo.claim_chunk(session, batch_id, "w", 30)
            assert chunk is not None
            batches_repo.complete_chunk(session, chunk, '{"key":"x"}\n', 1, 0, "m:1")
    with session_scope(engine) as session:
        if status == "completed":
            batches_repo.finish_planning(session, batch_id)
        else:
            assert batches_repo.cancel_batch(session, batch_id, None) is not None
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(finished_at=utcnow() - timedelta(days=days_ago))
        )
    folder = Path(out.removeprefix("file://"))
    folder.mkdir(parents=True, exist_ok=True)
    for seq in range(2):
        (folder / part_name(seq)).write_text('{"key":"x"}\n')
    return batch_id, folder


def rows(engine: Engine, batch_id: str) -> tuple[int, int]:
    """(batch rows, chunk rows) left of ``batch_id``."""
    with session_scope(engine) as session:
        batches = session.scalar(select(func.count()).where(Batch.id == batch_id))
        chunks = session.scalar(select(func.count()).where(BatchChunk.batch_id == batch_id))
    return int(batches or 0), int(chunks or 0)


def test_finished_batches_past_the_retention_go_with_their_own_part_files(
    engine: Engine, tmp_path: Path
) -> None:
    settings = settings_for(engine, tmp_path, retention_days=7)
    old, old_parts = ended_batch(engine, settings, days_ago=8)
    cancelled, cancelled_parts = ended_batch(engine, settings, days_ago=9, status="cancelled")
    client_out = f"file://{tmp_path}/client/run-1/"
    theirs, their_parts = ended_batch(engine, settings, days_ago=8, output=client_out)
    recent, recent_parts = ended_batch(engine, settings, days_ago=6)
    owing, _ = ended_batch(engine, settings, days_ago=8, webhook_url="http://127.0.0.1:9/h")
    running = batches_repo_running(engine)

    assert purge_expired_batches(engine, settings) == 3
    for gone in (old, cancelled, theirs):
        assert rows(engine, gone) == (0, 0)  # the row and its chunks' result lines
    assert not old_parts.exists() and not cancelled_parts.exists()  # our own store: deleted
    assert sorted(p.name for p in their_parts.iterdir()) == [part_name(0), part_name(1)]
    assert rows(engine, recent) == (1, 2)
    assert sorted(p.name for p in recent_parts.iterdir()) == [part_name(0), part_name(1)]
    assert rows(engine, owing) == (1, 2)  # its webhook event is still owed
    assert rows(engine, running) == (1, 1)

    with session_scope(engine) as session:  # the event given up on: the batch may go
        session.execute(update(BatchWebhookOutbox).values(status="exhausted"))
    assert purge_expired_batches(engine, settings) == 1
    assert rows(engine, owing) == (0, 0)


def batches_repo_running(engine: Engine) -> str:
    """A batch created long ago that still runs."""
    with session_scope(engine) as session:
        batches_repo.create_batch(
            session,
            batch_id="running-1",
            source="file:///d/",
            output="file:///o/",
            owner=None,
            model_name=None,
            top_k=1,
            metadata=None,
            webhook_url=None,
        )
        assert batches_repo.add_chunks(session, "running-1", 0, [["a"]])
        session.execute(
            update(Batch)
            .where(Batch.id == "running-1")
            .values(status="running", created_at=utcnow() - timedelta(days=40))
        )
    return "running-1"


def test_the_batch_setting_overrides_the_jobs_and_zero_keeps_everything(
    engine: Engine, tmp_path: Path
) -> None:
    unset = settings_for(engine, tmp_path)
    assert batch_retention_days(unset) == 30  # VQ_WORKER_RETENTION_DAYS
    batch_id, parts = ended_batch(engine, unset, days_ago=20)
    assert purge_expired_batches(engine, unset) == 0  # 20 days < the jobs' 30
    forever = settings_for(engine, tmp_path, retention_days=0)
    assert purge_expired_batches(engine, forever) == 0
    assert purge_expired_batches(engine, settings_for(engine, tmp_path, retention_days=10)) == 1
    assert rows(engine, batch_id) == (0, 0) and not parts.exists()


def test_a_store_that_refuses_keeps_the_batch_for_the_next_purge(
    engine: Engine, tmp_path: Path
) -> None:
    settings = settings_for(engine, tmp_path, retention_days=1)
    batch_id, parts = ended_batch(engine, settings, days_ago=2)
    moved = parts.with_name("moved-away")
    parts.rename(moved)
    parts.write_text("a file where the output folder was: no part file can be deleted")
    assert purge_expired_batches(engine, settings) == 0
    assert rows(engine, batch_id) == (1, 2)  # no row goes before the files it names
    parts.unlink()
    moved.rename(parts)
    assert purge_expired_batches(engine, settings) == 1
    assert rows(engine, batch_id) == (0, 0) and not parts.exists()
