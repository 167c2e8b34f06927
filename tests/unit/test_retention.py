"""Retention purge: old finished jobs go, shared images stay while referenced."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from jobs.retention import purge_expired, purge_orphans
from persistence import deliveries_repo
from persistence.db import session_scope
from persistence.images import LocalImageStore, key_for, sha256_hex
from persistence.models import Job, WebhookOutbox, utcnow
from tests.support import images
from tests.support.rows import add_job, migrated_sqlite


@pytest.fixture
def env(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = LocalImageStore(tmp_path / "images", "http://127.0.0.1:3000", b"k")
    store.ensure_bucket()
    with migrated_sqlite(tmp_path) as engine:
        yield engine, store


def _age(store: LocalImageStore, key: str, days: float) -> None:
    """Make the image file look written ``days`` ago."""
    then = time.time() - days * 86400
    os.utime(store.path(key), (then, then))


def _job(session, store, data: bytes, status: str, age_days: float) -> str:  # type: ignore[no-untyped-def]
    key = store.put(data, "image/jpeg")
    _age(store, key, age_days)
    job = add_job(
        session,
        image_key=key,
        image_sha256=sha256_hex(data),
        content_type="image/jpeg",
        image_size=len(data),
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
        left = set(session.scalars(select(Job.id)))
    assert left == {recent_shared, old_pending}
    assert old_shared not in left and old_alone not in left
    assert store.path(key_for(shared)).exists()  # still referenced by a recent job: kept
    assert not store.path(key_for(alone)).exists()  # no job left refers to it: deleted


def test_zero_days_keeps_everything(env) -> None:  # type: ignore[no-untyped-def]
    engine, store = env
    with session_scope(engine) as session:
        _job(session, store, images.jpeg(64, 64), "completed", 400)
    assert purge_expired(engine, store, days=0).jobs == 0


def test_an_image_written_again_recently_is_kept(env) -> None:  # type: ignore[no-untyped-def]
    # a submission stores its image before it commits its row: the same bytes uploaded
    # moments ago may belong to a job the purge cannot see yet
    engine, store = env
    data = images.jpeg(64, 64, seed=5)
    with session_scope(engine) as session:
        _job(session, store, data, "completed", 40)
    store.put(data, "image/jpeg")  # the in-flight submission: refreshes the write time
    result = purge_expired(engine, store, days=30)
    assert (result.jobs, result.images) == (1, 0)
    assert store.path(key_for(data)).exists()


def test_orphan_images_are_purged_after_the_grace_period(env) -> None:  # type: ignore[no-untyped-def]
    engine, store = env
    used, orphan, fresh = (images.jpeg(64, 64, seed=s) for s in (6, 7, 8))
    with session_scope(engine) as session:
        _job(session, store, used, "completed", 2)
    for data, days in ((orphan, 2), (fresh, 0)):  # stored by refused submissions
        _age(store, store.put(data, "image/jpeg"), days)
    assert len(store.list_keys("", 10)) == 3

    assert purge_orphans(engine, store, start_after="") == 1
    assert store.path(key_for(used)).exists()  # a job refers to it
    assert not store.path(key_for(orphan)).exists()
    assert store.path(key_for(fresh)).exists()  # may belong to a submission in flight
    assert purge_orphans(engine, store) == 0  # from a random point, wrapping around


def test_listing_resumes_after_a_key_and_skips_part_files(env) -> None:  # type: ignore[no-untyped-def]
    _, store = env
    keys = sorted(store.put(images.jpeg(32, 32, seed=s), "image/jpeg") for s in range(6))
    (store.path(keys[0]).parent / ".tmp-x.part").write_bytes(b"partial")
    listed = [key for key, _ in store.list_keys("", 100)]
    assert listed == keys
    assert [key for key, _ in store.list_keys(keys[2], 2)] == keys[3:5]
    assert store.list_keys(keys[-1], 10) == []
    assert store.last_modified(keys[0]) is not None
    assert store.last_modified("images/00/" + "0" * 64) is None


def test_a_job_still_owing_its_webhook_outlives_the_retention(env) -> None:  # type: ignore[no-untyped-def]
    engine, store = env
    with session_scope(engine) as session:
        owing = _job(session, store, images.jpeg(64, 64, seed=11), "completed", 40)
        session.flush()
        deliveries_repo.add_event(
            session,
            subject_id=owing,
            event_id="evt_x",
            event_type="job.completed",
            destination="http://127.0.0.1:9",
        )
    assert purge_expired(engine, store, days=30).jobs == 0  # retries pending: kept
    with session_scope(engine) as session:
        session.execute(update(WebhookOutbox).values(status="exhausted"))
    assert purge_expired(engine, store, days=30).jobs == 1  # given up on: purged


class ReuploadAfterListing(LocalImageStore):
    """A real local store on which a submission re-uploads an image right after a listing."""

    again: bytes = b""

    def list_keys(self, start_after: str, limit: int) -> list[tuple[str, datetime]]:
        listed = super().list_keys(start_after, limit)
        if self.again:
            self.put(self.again, "image/jpeg")  # refreshes the write time
        return listed


def test_an_orphan_uploaded_again_after_the_listing_is_kept(tmp_path: Path, env) -> None:  # type: ignore[no-untyped-def]
    engine, _ = env
    store = ReuploadAfterListing(tmp_path / "racy", "http://127.0.0.1:3000", b"k")
    store.ensure_bucket()
    data, gone = images.jpeg(64, 64, seed=12), images.jpeg(64, 64, seed=13)
    for each in (data, gone):
        _age(store, store.put(each, "image/jpeg"), 2)
    store.again = data
    assert purge_orphans(engine, store, start_after="") == 1
    assert store.path(key_for(data)).exists()  # its new job would have lost it
    assert not store.path(key_for(gone)).exists()
