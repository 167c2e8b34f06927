"""Retention purge: old finished jobs go, shared images stay while referenced."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from jobs.retention import purge_expired
from persistence import jobs_repo
from persistence.db import get_engine, session_scope
from persistence.images import LocalImageStore, key_for, sha256_hex
from persistence.migrate import upgrade_database
from persistence.models import Job, utcnow
from tests.support import images


@pytest.fixture
def env(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'vq.db'}"
    upgrade_database(url)
    store = LocalImageStore(tmp_path / "images", "http://127.0.0.1:3000", b"k")
    store.ensure_bucket()
    return get_engine(url), store


def _job(session, store, data: bytes, status: str, age_days: float) -> str:  # type: ignore[no-untyped-def]
    key = store.put(data, "image/jpeg")
    job = jobs_repo.create_job(
        session,
        image_key=key,
        image_sha256=sha256_hex(data),
        content_type="image/jpeg",
        image_size=len(data),
        width=64,
        height=64,
    )
    job.status = status
    job.finished_at = utcnow() - timedelta(days=age_days) if status != "pending" else None
    job.created_at = utcnow() - timedelta(days=age_days)
    return job.id


def test_purge_deletes_old_finished_jobs_and_orphaned_images(env) -> None:  # type: ignore[no-untyped-def]
    engine, store = env
    shared, alone = images.jpeg(64, 64, seed=1), images.jpeg(64, 64, seed=2)
    with session_scope(engine) as session:
        old_shared = _job(session, store, shared, "completed", 40)
        recent_shared = _job(session, store, shared, "completed", 1)
        old_alone = _job(session, store, alone, "failed", 40)
        old_pending = _job(session, store, images.jpeg(64, 64, seed=3), "pending", 40)

    result = purge_expired(engine, store, days=30)

    assert (result.jobs, result.images) == (2, 1)
    with session_scope(engine) as session:
        left = {j.id for j in session.query(Job)}
    assert left == {recent_shared, old_pending}
    assert old_shared not in left and old_alone not in left
    assert store.path(key_for(shared)).exists()  # still referenced by a recent job: kept
    assert not store.path(key_for(alone)).exists()  # no job left refers to it: deleted


def test_zero_days_keeps_everything(env) -> None:  # type: ignore[no-untyped-def]
    engine, store = env
    with session_scope(engine) as session:
        _job(session, store, images.jpeg(64, 64), "completed", 400)
    assert purge_expired(engine, store, days=0).jobs == 0
