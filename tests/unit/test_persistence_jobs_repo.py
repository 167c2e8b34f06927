"""The job repository on a migrated SQLite file: lifecycle, owners, listing, deliveries."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, update
from sqlalchemy.exc import IntegrityError

from persistence import deliveries_repo
from persistence import jobs_repo as repo
from persistence.db import session_scope
from persistence.models import Job, JobStatus
from tests.support.rows import create_job_row, migrated_sqlite, record_attempt
from visionqueue.core.errors import IdempotencyConflict, InvalidCursor, JobNotFound


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with migrated_sqlite(tmp_path) as engine:
        yield engine


def test_create_and_get_is_owner_scoped(engine: Engine) -> None:
    job_id = create_job_row(engine, owner="alice", webhook_url="http://127.0.0.1/hook")
    with session_scope(engine) as session:
        job = repo.get_job(session, job_id, "alice")
        assert job is not None
        assert job.status == JobStatus.PENDING
        assert job.attempts == 0
        assert job.metadata_ == {"source": "test"}
        assert job.created_at.tzinfo is not None
        assert abs(datetime.now(UTC) - job.created_at) < timedelta(minutes=1)
        assert len(job.id) == 36
        assert repo.get_job(session, job_id, "bob") is None
        assert repo.get_job(session, job_id, None) is None
        assert repo.get_job_by_id(session, job_id) is not None


def test_require_job_raises_job_not_found_for_another_owner(engine: Engine) -> None:
    job_id = create_job_row(engine, owner="alice")
    with session_scope(engine) as session:
        assert repo.require_job(session, job_id, "alice").id == job_id
        with pytest.raises(JobNotFound, match=job_id):
            repo.require_job(session, job_id, "bob")


def test_batch_jobs_and_delete_unfinished(engine: Engine) -> None:
    first = create_job_row(engine, owner="alice", batch_id="b1")
    second = create_job_row(engine, owner="alice", batch_id="b1")
    create_job_row(engine, owner="bob", batch_id="b1")  # another owner's batch id
    with session_scope(engine) as session:
        assert {j.id for j in repo.batch_jobs(session, "b1", "alice")} == {first, second}
        repo.claim_job(session, second)
        repo.complete_job(session, second, {"predictions": []}, "m:1", "imagenet1k_v1")
    with session_scope(engine) as session:
        repo.delete_unfinished(session, [first, second])
    with session_scope(engine) as session:
        assert [j.id for j in repo.batch_jobs(session, "b1", "alice")] == [second]


def test_anonymous_owner_is_stored_as_empty_string(engine: Engine) -> None:
    job_id = create_job_row(engine, owner=None)
    with session_scope(engine) as session:
        job = repo.get_job(session, job_id, None)
        assert job is not None
        assert job.owner == ""


def test_idempotency_key_is_unique_per_owner(engine: Engine) -> None:
    first = create_job_row(engine, owner=None, idempotency_key="k1")
    with pytest.raises(IdempotencyConflict):
        create_job_row(engine, owner=None, idempotency_key="k1")
    create_job_row(engine, owner="alice", idempotency_key="k1")  # another owner may reuse it
    create_job_row(engine, owner=None)
    create_job_row(engine, owner=None)  # no key: never a conflict
    with session_scope(engine) as session:
        found = repo.find_by_idempotency_key(session, None, "k1")
        assert found is not None
        assert found.id == first
        assert repo.find_by_idempotency_key(session, None, "other") is None


def test_lifecycle_claim_complete_once(engine: Engine) -> None:
    job_id = create_job_row(engine)
    with session_scope(engine) as session:
        job = repo.claim_job(session, job_id)
        assert job is not None
        assert (job.status, job.attempts) == ("processing", 1)
        assert job.started_at is not None
    with session_scope(engine) as session:
        assert repo.complete_job(session, job_id, {"top1": "cat"}, "resnet18:v1", "random")
    with session_scope(engine) as session:
        assert not repo.complete_job(session, job_id, {"top1": "dog"}, "resnet18:v2", "random")
        assert not repo.fail_job(session, job_id, "boom", "late failure")
        assert repo.claim_job(session, job_id) is None
    with session_scope(engine) as session:
        job = repo.get_job_by_id(session, job_id)
        assert job is not None
        assert (job.status, job.result, job.model_tag) == (
            "completed",
            {"top1": "cat"},
            "resnet18:v1",
        )
        assert job.weights_origin == "random"
        assert job.finished_at is not None
        assert job.attempts == 1


def test_redelivered_message_reclaims_a_processing_job(engine: Engine) -> None:
    job_id = create_job_row(engine)
    with session_scope(engine) as session:
        assert repo.claim_job(session, job_id) is not None
    with session_scope(engine) as session:
        job = repo.claim_job(session, job_id)
        assert job is not None
        assert job.attempts == 2


def test_fail_only_from_processing(engine: Engine) -> None:
    job_id = create_job_row(engine)
    with session_scope(engine) as session:
        assert not repo.fail_job(session, job_id, "invalid_image", "cannot decode")
        repo.claim_job(session, job_id)
        assert repo.fail_job(session, job_id, "invalid_image", "cannot decode")
    with session_scope(engine) as session:
        job = repo.get_job_by_id(session, job_id)
        assert job is not None
        assert (job.status, job.error_code, job.result) == ("failed", "invalid_image", None)


def test_cancel_only_pending_and_only_by_owner(engine: Engine) -> None:
    job_id = create_job_row(engine, owner="alice")
    with session_scope(engine) as session:
        assert not repo.cancel_job(session, job_id, "bob")
        assert repo.cancel_job(session, job_id, "alice")
        assert not repo.cancel_job(session, job_id, "alice")
        assert repo.claim_job(session, job_id) is None
    busy = create_job_row(engine, owner="alice")
    with session_scope(engine) as session:
        repo.claim_job(session, busy)
        assert not repo.cancel_job(session, busy, "alice")


def test_claim_in_the_same_session_refreshes_the_loaded_row(engine: Engine) -> None:
    job_id = create_job_row(engine)
    with session_scope(engine) as session:
        loaded = repo.get_job_by_id(session, job_id)
        claimed = repo.claim_job(session, job_id)
        assert claimed is loaded
        assert loaded is not None
        assert loaded.status == "processing"


def test_list_jobs_pages_newest_first(engine: Engine) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    ids = []
    for i in range(7):
        # Two jobs share each timestamp: the id breaks the tie.
        ids.append(
            create_job_row(engine, owner="alice", created_at=base + timedelta(seconds=i // 2))
        )
    create_job_row(engine, owner="bob")
    expected = [
        job_id
        for _, job_id in sorted(((i // 2, job_id) for i, job_id in enumerate(ids)), reverse=True)
    ]
    seen: list[str] = []
    cursor = None
    with session_scope(engine) as session:
        for _ in range(10):
            page, cursor = repo.list_jobs(session, "alice", None, 3, cursor)
            seen.extend(job.id for job in page)
            if cursor is None:
                break
    assert seen == expected
    with session_scope(engine) as session:
        page, cursor = repo.list_jobs(session, "alice", None, 7, None)
        assert len(page) == 7
        assert cursor is None


def test_list_jobs_filters_by_status(engine: Engine) -> None:
    pending = create_job_row(engine)
    done = create_job_row(engine)
    with session_scope(engine) as session:
        repo.claim_job(session, done)
        repo.complete_job(session, done, {}, "t", "o")
    with session_scope(engine) as session:
        assert [j.id for j in repo.list_jobs(session, None, "pending", 10)[0]] == [pending]
        assert [j.id for j in repo.list_jobs(session, None, "completed", 10)[0]] == [done]


@pytest.mark.parametrize("cursor", ["", "not base64!", "bm90IGpzb24", "WzEsMl0", "WyJ4IiwieSJd"])
def test_bad_cursors_are_bad_requests(engine: Engine, cursor: str) -> None:
    with session_scope(engine) as session, pytest.raises(InvalidCursor):
        repo.list_jobs(session, None, None, 10, cursor)


def test_cursor_round_trip() -> None:
    created = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    token = repo.encode_cursor(created, "abc")
    assert "=" not in token
    assert repo.decode_cursor(token) == (created, "abc")
    with pytest.raises(InvalidCursor):
        repo.decode_cursor(repo.encode_cursor(created.replace(tzinfo=None), "abc"))


def test_stale_pending_jobs_and_mark_queued(engine: Engine) -> None:
    old = datetime.now(UTC) - timedelta(hours=1)
    lost = create_job_row(engine, created_at=old)
    requeued = create_job_row(engine, created_at=old)
    create_job_row(engine)  # fresh
    claimed = create_job_row(engine, created_at=old)
    with session_scope(engine) as session:
        repo.claim_job(session, claimed)
        repo.mark_queued(session, [requeued])
    with session_scope(engine) as session:
        stale = repo.stale_pending_jobs(session, timedelta(minutes=10), 10)
        assert [job.id for job in stale] == [lost]
        repo.mark_queued(session, [job.id for job in stale])
    with session_scope(engine) as session:
        assert repo.stale_pending_jobs(session, timedelta(minutes=10), 10) == []


def test_count_by_status(engine: Engine) -> None:
    for _ in range(3):
        create_job_row(engine)
    done = create_job_row(engine)
    with session_scope(engine) as session:
        repo.claim_job(session, done)
    with session_scope(engine) as session:
        counts = repo.count_by_status(session)
    assert counts == {"pending": 3, "processing": 1, "completed": 0, "failed": 0, "cancelled": 0}
    finished = create_job_row(engine)
    with session_scope(engine) as session:
        repo.claim_job(session, finished)
        repo.complete_job(session, finished, {"predictions": []}, "m:1", "random-init:seed=0")
    with session_scope(engine) as session:
        assert repo.count_unfinished(session) == 4  # the back-pressure count


def test_deliveries_are_recorded_listed_and_cascade(engine: Engine) -> None:
    job_id = create_job_row(engine)
    later = datetime.now(UTC) + timedelta(seconds=5)
    record_attempt(
        engine, job_id, 1, succeeded=False, latency_ms=12.5, status_code=500, next_attempt_at=later
    )
    record_attempt(engine, job_id, 2, latency_ms=3.0, status_code=204)
    with session_scope(engine) as session:
        deliveries = deliveries_repo.list_attempts(session, job_id)
        assert [(d.attempt, d.succeeded, d.status_code) for d in deliveries] == [
            (1, False, 500),
            (2, True, 204),
        ]
        assert deliveries[0].next_attempt_at == later
        session.execute(delete(Job).where(Job.id == job_id))
    with session_scope(engine) as session:
        assert deliveries_repo.list_attempts(session, job_id) == []


def test_status_outside_the_enum_is_refused(engine: Engine) -> None:
    job_id = create_job_row(engine)
    with pytest.raises(IntegrityError, match="CHECK"), session_scope(engine) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="lost"))


def test_concurrent_completions_produce_one_result(engine: Engine) -> None:
    job_id = create_job_row(engine)
    barrier = threading.Barrier(4)
    outcomes: list[bool] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        barrier.wait(timeout=10)
        with session_scope(engine) as session:
            claimed = repo.claim_job(session, job_id) is not None
        with session_scope(engine) as session:
            done = claimed and repo.complete_job(session, job_id, {"worker": n}, "t", "o")
        with lock:
            outcomes.append(done)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == [False, False, False, True]
    with session_scope(engine) as session:
        job = repo.get_job_by_id(session, job_id)
        assert job is not None
        assert job.status == "completed"
        assert job.result is not None
        assert job.attempts >= 1


def test_a_requests_rows_are_written_in_one_statement(engine: Engine) -> None:
    from sqlalchemy import event

    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement.split()[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    try:
        with session_scope(engine) as session:
            jobs = [
                repo.create_job(
                    session,
                    image_key=f"k{i}",
                    image_sha256="a" * 64,
                    content_type="image/jpeg",
                    image_size=1,
                    width=1,
                    height=1,
                    idempotency_key=f"key#{i}",
                    flush=False,
                )
                for i in range(5)
            ]
            repo.flush_jobs(session, jobs)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert statements.count("INSERT") == 1, statements
    with session_scope(engine) as session:
        assert all(repo.get_job_by_id(session, job.id) for job in jobs)
    # a taken key among them is still the domain error
    with pytest.raises(IdempotencyConflict), session_scope(engine) as session:
        again = [
            repo.create_job(
                session,
                image_key="k9",
                image_sha256="b" * 64,
                content_type="image/jpeg",
                image_size=1,
                width=1,
                height=1,
                idempotency_key="key#3",
                flush=False,
            )
        ]
        repo.flush_jobs(session, again)
