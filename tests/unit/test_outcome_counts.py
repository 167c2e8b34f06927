"""Running job and webhook totals in the database: counted once each, rendered for /metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from persistence import deliveries_repo, jobs_repo, outcome_counts
from persistence.db import session_scope
from tests.support.rows import create_job_row, migrated_sqlite, record_attempt
from visionqueue.api.backlog import outcome_exposition


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with migrated_sqlite(tmp_path) as migrated:
        yield migrated


def finish(engine: Engine, code: str | None) -> bool:
    job_id = create_job_row(engine)
    with session_scope(engine) as session:
        jobs_repo.claim_job(session, job_id)
    with session_scope(engine) as session:
        if code is None:
            done = jobs_repo.complete_job(session, job_id, {"predictions": []}, "m:1", "random")
        else:
            done = jobs_repo.fail_job(session, job_id, code, "broken")
    with session_scope(engine) as session:  # a redelivered finish changes nothing
        assert not jobs_repo.complete_job(session, job_id, {}, "m:1", "random")
        assert not jobs_repo.fail_job(session, job_id, "late", "late")
    return done


def test_each_finished_job_counts_once(engine: Engine) -> None:
    for code in (None, None, None, "invalid_image", "invalid_image", "image_missing"):
        assert finish(engine, code)
    with session_scope(engine) as session:
        totals = outcome_counts.read(session)
    assert totals.success == 3
    assert totals.failures == {"invalid_image": 2, "image_missing": 1}
    assert sum(totals.latency_buckets.values()) == 3
    assert totals.latency_sum >= 0

    text = outcome_exposition(totals)
    assert "image_task_success_total 3.0" in text
    assert 'image_task_failure_total{code="invalid_image"} 2.0' in text
    assert 'image_task_latency_seconds_bucket{le="+Inf"} 3.0' in text
    assert "image_task_latency_seconds_count 3.0" in text


def test_latency_buckets_are_cumulative_in_the_exposition() -> None:
    assert outcome_counts.bucket_label(0.05) == "0.1"
    assert outcome_counts.bucket_label(0.1) == "0.1"  # le is inclusive
    assert outcome_counts.bucket_label(3) == "5.0"
    assert outcome_counts.bucket_label(10_000) == "+Inf"
    totals = outcome_counts.OutcomeTotals(
        success=3, latency_buckets={"0.1": 1, "5.0": 1, "+Inf": 1}, latency_sum=10_003.15
    )
    text = outcome_exposition(totals)
    assert 'image_task_latency_seconds_bucket{le="0.1"} 1.0' in text
    assert 'image_task_latency_seconds_bucket{le="2.0"} 1.0' in text
    assert 'image_task_latency_seconds_bucket{le="5.0"} 2.0' in text
    assert 'image_task_latency_seconds_bucket{le="1800.0"} 2.0' in text
    assert 'image_task_latency_seconds_bucket{le="+Inf"} 3.0' in text


def test_webhook_attempts_of_every_worker_count_in_the_front_exposition(engine: Engine) -> None:
    # two workers: two processes' engines on one database, each appending to the delivery log
    other = create_engine(str(engine.url))
    try:
        job_id = create_job_row(engine)
        failed = {"succeeded": False, "status_code": 500, "error": "http_500"}
        record_attempt(engine, job_id, 1, latency_ms=30.0, **failed)
        record_attempt(other, job_id, 2, latency_ms=70.0, **failed)
        record_attempt(other, job_id, 3, latency_ms=4.0)
        record_attempt(engine, create_job_row(engine), 1, latency_ms=2_000.0)
    finally:
        other.dispose()
    with session_scope(engine) as session:
        logged = len(deliveries_repo.list_attempts(session, job_id))
        totals = outcome_counts.read(session)
    assert logged == 3
    assert totals.webhook_success == 2
    assert totals.webhook_failures == {"http_500": 2}
    assert totals.webhook_latency_buckets == {"0.01": 1, "0.05": 1, "0.1": 1, "2.5": 1}
    assert totals.webhook_latency_sum == pytest.approx(2.104)

    text = outcome_exposition(totals)
    assert "webhook_success_total 2.0" in text
    assert 'webhook_failure_total{error="http_500"} 2.0' in text
    assert 'webhook_latency_seconds_bucket{le="0.05"} 2.0' in text
    assert 'webhook_latency_seconds_bucket{le="+Inf"} 4.0' in text
    assert "webhook_latency_seconds_count 4.0" in text
