"""Migrations and the job repository on a real PostgreSQL server (fresh database per test)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, delete, text

from persistence import deliveries_repo, outcome_counts
from persistence import jobs_repo as repo
from persistence.db import get_engine, session_scope
from persistence.migrate import alembic_config, upgrade_database
from persistence.models import Base, Job
from tests.support.postgres import throwaway_postgres_url
from tests.support.rows import create_job_row, record_attempt, upgrade_in_processes
from visionqueue.core.errors import DatabaseUnavailable, IdempotencyConflict

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_url() -> Iterator[str]:
    with throwaway_postgres_url() as url:
        yield url


@pytest.fixture
def engine(pg_url: str) -> Engine:
    upgrade_database(pg_url)
    return get_engine(pg_url)


def _run_together(count: int, target: Callable[[int], object]) -> list[object]:
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[n] = target(n)
        except BaseException as exc:
            results[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def _head() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == _head()
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        kind = conn.execute(
            text(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = 'jobs' AND column_name = 'metadata'"
            )
        ).scalar()
        assert kind == "jsonb"


def test_concurrent_upgrades_from_threads(pg_url: str) -> None:
    results = _run_together(3, lambda _: upgrade_database(pg_url))
    assert results == [None, None, None]


def test_concurrent_upgrades_from_processes(pg_url: str) -> None:
    results = upgrade_in_processes(pg_url)
    assert [rc for rc, _ in results] == [0, 0], results
    with get_engine(pg_url).connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == _head()


def test_full_job_flow(engine: Engine) -> None:
    job_id = create_job_row(engine, owner="alice", idempotency_key="req-1", batch_id="b1")
    with pytest.raises(IdempotencyConflict):
        create_job_row(engine, owner="alice", idempotency_key="req-1")
    create_job_row(engine, owner=None, idempotency_key="req-1")
    with session_scope(engine) as session:
        found = repo.find_by_idempotency_key(session, "alice", "req-1")
        assert found is not None
        assert found.id == job_id
        assert repo.get_job(session, job_id, "bob") is None
        claimed = repo.claim_job(session, job_id)
        assert claimed is not None
        assert (claimed.status, claimed.attempts) == ("processing", 1)
    with session_scope(engine) as session:
        assert repo.complete_job(session, job_id, {"labels": ["cat"]}, "resnet18:x", "random")
    with session_scope(engine) as session:
        assert not repo.complete_job(session, job_id, {"labels": ["dog"]}, "resnet18:y", "random")
        assert not repo.cancel_job(session, job_id, "alice")
        job = repo.get_job(session, job_id, "alice")
        assert job is not None
        assert (job.status, job.result, job.model_tag) == (
            "completed",
            {"labels": ["cat"]},
            "resnet18:x",
        )
        assert job.finished_at is not None
        assert job.finished_at.tzinfo is not None
    cancelled = create_job_row(engine, owner="alice")
    with session_scope(engine) as session:
        assert repo.cancel_job(session, cancelled, "alice")
        assert repo.claim_job(session, cancelled) is None
        assert repo.count_by_status(session)["cancelled"] == 1


def test_list_jobs_pages_newest_first(engine: Engine) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    ids = [
        create_job_row(engine, owner="alice", created_at=base + timedelta(microseconds=i // 2))
        for i in range(7)
    ]
    create_job_row(engine, owner="bob")
    expected = [
        job_id for _, job_id in sorted(((i // 2, j) for i, j in enumerate(ids)), reverse=True)
    ]
    seen: list[str] = []
    cursor = None
    with session_scope(engine) as session:
        for _ in range(10):
            page, cursor = repo.list_jobs(session, "alice", None, 2, cursor)
            seen.extend(job.id for job in page)
            if cursor is None:
                break
    assert seen == expected


def test_concurrent_claim_and_complete_produce_one_completion(engine: Engine) -> None:
    job_id = create_job_row(engine)

    def worker(n: int) -> bool:
        with session_scope(engine) as session:
            if repo.claim_job(session, job_id) is None:
                return False
        with session_scope(engine) as session:
            return repo.complete_job(session, job_id, {"worker": n}, "t", "o")

    results = _run_together(4, worker)
    assert sorted(results, key=str) == [False, False, False, True]
    with session_scope(engine) as session:
        job = repo.get_job_by_id(session, job_id)
        assert job is not None
        assert job.result == {"worker": results.index(True)}


def test_concurrent_claims_in_open_transactions_serialise(engine: Engine) -> None:
    job_id = create_job_row(engine)

    def worker(n: int) -> bool:
        # Claim and complete in one transaction: the row lock orders the two workers.
        with session_scope(engine) as session:
            if repo.claim_job(session, job_id) is None:
                return False
            return repo.complete_job(session, job_id, {"worker": n}, "t", "o")

    assert sorted(_run_together(2, worker), key=str) == [False, True]


def test_batches_finished_together_never_deadlock_on_the_totals(engine: Engine) -> None:
    # two workers each complete a batch of two jobs in one transaction, their latency
    # buckets in opposite orders (as the CI run's 300 jobs did): per-job counter upserts
    # locked one bucket row each, then waited for each other's
    now = datetime.now(UTC)
    ages = {"fresh": timedelta(seconds=1.5), "old": timedelta(seconds=20)}
    batches = [
        [create_job_row(engine, created_at=now - ages[age]) for age in order]
        for order in (("fresh", "old"), ("old", "fresh"))
    ]
    for batch in batches:
        with session_scope(engine) as session:
            assert all(repo.claim_job(session, job_id) for job_id in batch)
    halfway = threading.Barrier(2)

    def finish(n: int) -> None:
        with session_scope(engine) as session:
            first, second = batches[n]
            assert repo.complete_job(session, first, {"n": n}, "t", "o")
            halfway.wait(timeout=10)
            assert repo.complete_job(session, second, {"n": n}, "t", "o")

    assert _run_together(2, finish) == [None, None]
    with session_scope(engine) as session:
        totals = outcome_counts.read(session)
    assert totals.success == 4
    assert totals.latency_buckets == {"2.0": 2, "30.0": 2}


def test_a_rolled_back_finish_is_not_counted(engine: Engine) -> None:
    job_id = create_job_row(engine)
    with session_scope(engine) as session:
        repo.claim_job(session, job_id)
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        assert repo.complete_job(session, job_id, {}, "t", "o")
        raise RuntimeError("the batch failed before its commit")
    with session_scope(engine) as session:
        assert outcome_counts.read(session).success == 0
        assert repo.complete_job(session, job_id, {}, "t", "o")
    with session_scope(engine) as session:
        assert outcome_counts.read(session).success == 1


def test_stale_pending_sweep(engine: Engine) -> None:
    old = datetime.now(UTC) - timedelta(hours=2)
    lost = create_job_row(engine, created_at=old)
    create_job_row(engine)
    with session_scope(engine) as session:
        assert [j.id for j in repo.stale_pending_jobs(session, timedelta(hours=1), 10)] == [lost]
        repo.mark_queued(session, [lost])
    with session_scope(engine) as session:
        assert repo.stale_pending_jobs(session, timedelta(hours=1), 10) == []


def test_deliveries_cascade_with_their_job(engine: Engine) -> None:
    job_id = create_job_row(engine)
    record_attempt(engine, job_id, 1)
    with session_scope(engine) as session:
        assert len(deliveries_repo.list_attempts(session, job_id)) == 1
        session.execute(delete(Job).where(Job.id == job_id))
    with session_scope(engine) as session:
        assert deliveries_repo.list_attempts(session, job_id) == []


def test_unreachable_server_is_database_unavailable() -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/none"
    with pytest.raises(DatabaseUnavailable), session_scope(get_engine(url)) as session:
        session.execute(text("SELECT 1"))
    with pytest.raises(DatabaseUnavailable):
        upgrade_database(url)
