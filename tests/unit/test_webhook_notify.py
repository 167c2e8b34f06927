"""Webhook notification bookkeeping on a migrated SQLite file: the log, retries, the sweeper.

No network: the targets here are refused before any connection (SSRF guard, bad secret).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks
from pydantic import SecretStr
from sqlalchemy import update

from jobs.notify import (
    COUNTDOWN_LIMIT_S,
    attempt_delivery,
    due_deliveries,
    event_headers,
    event_id_for,
    hand_to_sweeper,
)
from jobs.resources import Resources
from jobs.webhooks import delivery_log
from jobs.webhooks.signing import generate_secret
from persistence import jobs_repo
from persistence.db import dispose_engines, get_engine, session_scope
from persistence.local_images import LocalImageStore
from persistence.migrate import upgrade_database
from persistence.models import WebhookDelivery, utcnow
from visionqueue.core.settings import DatabaseSettings, ServerSettings, Settings, WebhookSettings

HOOK = "http://127.0.0.1:9/hooks"  # never reached: every test's guard or secret stops it first


def make_resources(tmp_path: Path, env: str = "dev", **webhook: Any) -> Iterator[Resources]:
    url = f"sqlite:///{tmp_path}/vq.db"
    upgrade_database(url)
    settings = Settings(
        data_dir=tmp_path,
        server=ServerSettings(env=env),
        database=DatabaseSettings(url=url),
        webhook=WebhookSettings(**webhook),
    )
    store = LocalImageStore(tmp_path / "images", "http://127.0.0.1:3000", b"test-signing-key")
    with httpx.Client() as http:
        yield Resources(settings, get_engine(url), store, http)
    dispose_engines(url)


@pytest.fixture
def res(tmp_path: Path) -> Iterator[Resources]:
    # No allow-list: 127.0.0.1 is refused at delivery time without opening a connection.
    yield from make_resources(tmp_path, secrets=[SecretStr(generate_secret())])


@pytest.fixture
def badly_keyed(tmp_path: Path) -> Iterator[Resources]:
    # A malformed secret fails signing, a transient failure that needs no network.
    yield from make_resources(
        tmp_path, secrets=[SecretStr("not-a-whsec")], retry_schedule=[3600.0, 5.0]
    )


def new_job(res: Resources, webhook_url: str = HOOK) -> str:
    digest = uuid.uuid4().hex * 2
    with session_scope(res.engine) as session:
        return jobs_repo.create_job(
            session,
            image_key=f"images/{digest[:2]}/{digest}",
            image_sha256=digest,
            content_type="image/png",
            image_size=10,
            width=2,
            height=2,
            metadata={},
            webhook_url=webhook_url,
        ).id


def finished_job(res: Resources, status: str = "completed", webhook_url: str = HOOK) -> str:
    job_id = new_job(res, webhook_url)
    with session_scope(res.engine) as session:
        jobs_repo.claim_job(session, job_id)
        if status == "completed":
            result = {"predictions": [{"class": "tabby", "confidence": 0.9}]}
            jobs_repo.complete_job(session, job_id, result, "resnet18:x", "random-init:seed=0")
        else:
            jobs_repo.fail_job(session, job_id, "invalid_image", "the image is corrupt")
    return job_id


def log_row(res: Resources, job_id: str, attempt: int, next_at_offset_s: float | None) -> None:
    with session_scope(res.engine) as session:
        jobs_repo.record_delivery(
            session,
            job_id=job_id,
            event_id=event_id_for(job_id, "job.completed"),
            event_type="job.completed",
            attempt=attempt,
            succeeded=False,
            latency_ms=12.0,
            status_code=500,
            error="http_500",
            next_attempt_at=(
                None if next_at_offset_s is None else utcnow() + timedelta(seconds=next_at_offset_s)
            ),
        )


def deliveries(res: Resources, job_id: str) -> list[WebhookDelivery]:
    with session_scope(res.engine) as session:
        return jobs_repo.list_deliveries(session, job_id)


def test_a_due_retry_is_claimed_exactly_once(res: Resources) -> None:
    due, later, done = finished_job(res), finished_job(res), finished_job(res)
    log_row(res, due, 1, None)
    log_row(res, due, 2, -5)
    log_row(res, later, 1, 3600)
    log_row(res, done, 1, None)

    assert due_deliveries(res) == [(due, 3)]
    assert due_deliveries(res) == []
    assert [d.next_attempt_at for d in deliveries(res, due)] == [None, None]
    [pending] = deliveries(res, later)
    assert pending.next_attempt_at is not None  # not due yet: left alone


def test_due_retries_come_oldest_first_and_respect_the_limit(res: Resources) -> None:
    jobs = [finished_job(res) for _ in range(3)]
    for offset, job_id in zip((-10, -30, -20), jobs, strict=True):
        log_row(res, job_id, 1, offset)
    assert due_deliveries(res, limit=2) == [(jobs[1], 2), (jobs[2], 2)]
    assert due_deliveries(res, limit=2) == [(jobs[0], 2)]


def test_a_forbidden_address_is_logged_once_and_never_retried(res: Resources) -> None:
    job_id = finished_job(res)
    outcome = attempt_delivery(job_id, 1, res)
    assert (outcome.succeeded, outcome.retry_in_s) == (False, None)
    [row] = deliveries(res, job_id)
    assert (row.attempt, row.error, row.status_code, row.succeeded) == (
        1,
        "forbidden_address",
        None,
        False,
    )
    assert row.event_id == event_id_for(job_id, "job.completed")
    assert row.event_type == "job.completed"
    assert row.next_attempt_at is None


def test_a_failed_job_sends_job_failed(res: Resources) -> None:
    job_id = finished_job(res, status="failed")
    attempt_delivery(job_id, 1, res)
    [row] = deliveries(res, job_id)
    assert (row.event_type, row.event_id) == ("job.failed", event_id_for(job_id, "job.failed"))


def test_an_attempt_number_already_logged_is_not_sent_again(res: Resources) -> None:
    job_id = finished_job(res)
    attempt_delivery(job_id, 1, res)
    # a redelivered broker message, or a redelivery racing a pending retry
    outcome = attempt_delivery(job_id, 1, res)
    assert (outcome.succeeded, outcome.retry_in_s) == (False, None)
    assert len(deliveries(res, job_id)) == 1


@pytest.mark.parametrize("case", ["pending", "no-webhook", "missing"])
def test_nothing_is_sent_for_unfinished_or_hookless_jobs(res: Resources, case: str) -> None:
    job_id = {
        "pending": lambda: new_job(res),
        "no-webhook": lambda: finished_job(res, webhook_url=""),
        "missing": lambda: str(uuid.uuid4()),
    }[case]()
    outcome = attempt_delivery(job_id, 1, res)
    assert (outcome.succeeded, outcome.retry_in_s) == (False, None)
    assert deliveries(res, job_id) == []


def test_a_long_wait_goes_to_the_sweeper_and_a_short_one_to_a_countdown(
    badly_keyed: Resources,
) -> None:
    res = badly_keyed
    job_id = finished_job(res)

    first = attempt_delivery(job_id, 1, res)  # schedule[0] = 3600 s: beyond a countdown
    assert (first.succeeded, first.retry_in_s) == (False, None)
    [row] = deliveries(res, job_id)
    assert row.error == "signing_error"
    assert row.next_attempt_at is not None
    wait_s = (row.next_attempt_at - utcnow()).total_seconds()
    assert COUNTDOWN_LIMIT_S < wait_s <= 3600 * 1.2 + 1
    assert due_deliveries(res) == []  # not due for an hour

    with session_scope(res.engine) as session:
        session.execute(
            update(WebhookDelivery).values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
    assert due_deliveries(res) == [(job_id, 2)]
    assert due_deliveries(res) == []

    second = attempt_delivery(job_id, 2, res)  # schedule[1] = 5 s: a broker countdown
    assert second.retry_in_s is not None and 4 <= second.retry_in_s <= 6
    assert deliveries(res, job_id)[-1].next_attempt_at is None

    third = attempt_delivery(job_id, 3, res)  # out of schedule: the last attempt
    assert (third.succeeded, third.retry_in_s) == (False, None)
    assert [d.attempt for d in deliveries(res, job_id)] == [1, 2, 3]
    assert all(d.next_attempt_at is None for d in deliveries(res, job_id))


def test_an_unqueued_countdown_is_handed_to_the_sweeper(res: Resources) -> None:
    job_id = finished_job(res)
    log_row(res, job_id, 1, None)
    hand_to_sweeper(res, job_id, 1, 0.0)
    assert due_deliveries(res) == [(job_id, 2)]


def test_redelivery_numbers_follow_the_log_and_cancel_older_sweeper_retries(
    res: Resources,
) -> None:
    job_id = finished_job(res)
    assert delivery_log.next_attempt_number(res.engine, job_id) == 1
    log_row(res, job_id, 1, None)
    log_row(res, job_id, 2, 3600)
    attempt = delivery_log.next_attempt_number(res.engine, job_id)
    assert attempt == 3
    log_row(res, job_id, 3, 3600)  # the redelivery failed and planned its own retry
    assert delivery_log.cancel_scheduled(res.engine, job_id, before_attempt=attempt) == 1
    assert [d.next_attempt_at is None for d in deliveries(res, job_id)] == [True, True, False]


def test_headers_are_signed_with_every_secret() -> None:
    old, new = generate_secret(), generate_secret()
    body = json.dumps({"type": "job.completed"}).encode()
    headers = event_headers([SecretStr(old), SecretStr(new)], "evt_1", 1_700_000_000, body)
    assert headers["webhook-id"] == "evt_1"
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        wh = standardwebhooks.Webhook(secret)
        sig = wh.sign("evt_1", _at(1_700_000_000), body.decode())
        assert sig in headers["webhook-signature"].split(" ")


def test_without_secrets_headers_are_unsigned() -> None:
    headers = event_headers([], "evt_1", 1_700_000_000, b"{}")
    assert "webhook-signature" not in headers
    assert headers["webhook-id"] == "evt_1"
    assert headers["webhook-timestamp"] == "1700000000"


def test_production_never_sends_unsigned(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no webhook secret"):
        event_headers([], "evt_1", 1_700_000_000, b"{}", allow_unsigned=False)
    for res in make_resources(tmp_path, env="production", retry_schedule=[5.0]):
        job_id = finished_job(res)
        outcome = attempt_delivery(job_id, 1, res)
        assert outcome.retry_in_s is not None  # retried: the operator sets the secret
        [row] = deliveries(res, job_id)
        assert (row.error, row.status_code) == ("signing_error", None)


def _at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
