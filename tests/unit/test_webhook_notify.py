"""Webhook outbox bookkeeping on a migrated SQLite file: claims, the log, retries, the relay.

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

from jobs.lease_keeper import LeaseKeeper
from jobs.notify import (
    COUNTDOWN_LIMIT_S,
    RELAY_STALE_S,
    attempt_delivery,
    event_headers,
    event_id_for,
    owe_event,
    relay_due,
)
from jobs.resources import Resources
from jobs.webhooks.signing import generate_secret
from persistence import deliveries_repo, jobs_repo
from persistence.db import dispose_engines, get_engine, session_scope
from persistence.local_images import LocalImageStore
from persistence.migrate import upgrade_database
from persistence.models import OutboxStatus, WebhookDelivery, WebhookOutbox, utcnow
from tests.support.rows import create_job_row
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
    engine = get_engine(url)
    with httpx.Client() as http:
        yield Resources(settings, engine, store, http, LeaseKeeper(engine, 15))
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
    return create_job_row(res.engine, webhook_url=webhook_url, metadata={})


def finished_job(res: Resources, status: str = "completed", webhook_url: str = HOOK) -> str:
    job_id = new_job(res, webhook_url)
    with session_scope(res.engine) as session:
        jobs_repo.claim_job(session, job_id)
        if status == "completed":
            result = {"predictions": [{"class": "tabby", "confidence": 0.9}]}
            jobs_repo.complete_job(session, job_id, result, "resnet18:x", "random-init:seed=0")
        else:
            jobs_repo.fail_job(session, job_id, "invalid_image", "the image is corrupt")
        if webhook_url:
            owe_event(session, job_id, status, webhook_url)
    return job_id


def outbox(res: Resources, job_id: str) -> WebhookOutbox:
    with session_scope(res.engine) as session:
        row = deliveries_repo.get_event(session, job_id)
    assert row is not None
    return row


def make_due(res: Resources, job_id: str, seconds_ago: float = 1.0) -> None:
    with session_scope(res.engine) as session:
        session.execute(
            update(WebhookOutbox)
            .where(WebhookOutbox.job_id == job_id)
            .values(next_attempt_at=utcnow() - timedelta(seconds=seconds_ago))
        )


def deliveries(res: Resources, job_id: str) -> list[WebhookDelivery]:
    with session_scope(res.engine) as session:
        return list(deliveries_repo.list_attempts(session, job_id))


def test_finishing_a_job_owes_its_event_due_now(res: Resources) -> None:
    job_id = finished_job(res)
    row = outbox(res, job_id)
    assert (row.status, row.attempts, row.destination) == ("pending", 0, "http://127.0.0.1:9")
    assert row.event_id == event_id_for(job_id, "job.completed")
    assert row.next_attempt_at is not None and row.next_attempt_at <= utcnow()
    assert deliveries(res, job_id) == []  # owed, not attempted yet


def test_a_forbidden_address_is_logged_once_and_recorded_exhausted(res: Resources) -> None:
    job_id = finished_job(res)
    outcome = attempt_delivery(job_id, res)
    assert (outcome.succeeded, outcome.retry_in_s, outcome.claimed) == (False, None, True)
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
    owed = outbox(res, job_id)
    assert (owed.status, owed.attempts, owed.claimed_until) == ("exhausted", 1, None)


def test_a_failed_job_sends_job_failed(res: Resources) -> None:
    job_id = finished_job(res, status="failed")
    attempt_delivery(job_id, res)
    [row] = deliveries(res, job_id)
    assert (row.event_type, row.event_id) == ("job.failed", event_id_for(job_id, "job.failed"))


def test_a_duplicate_message_sends_nothing(res: Resources) -> None:
    job_id = finished_job(res)
    attempt_delivery(job_id, res)
    # a redelivered broker message, or the relay racing the fast path
    outcome = attempt_delivery(job_id, res)
    assert (outcome.succeeded, outcome.retry_in_s, outcome.claimed) == (False, None, False)
    assert len(deliveries(res, job_id)) == 1


def test_an_attempt_in_flight_cannot_be_claimed_twice_and_numbers_are_unique(
    res: Resources,
) -> None:
    job_id = finished_job(res)
    with session_scope(res.engine) as session:
        first = deliveries_repo.claim_attempt(session, job_id, hold_s=60, max_in_flight=10)
    with session_scope(res.engine) as session:
        second = deliveries_repo.claim_attempt(session, job_id, hold_s=60, max_in_flight=10)
    assert first is not None and first.attempt == 1
    assert second is None  # one attempt at a time
    # the holder died: once its claim lapses the next attempt gets the next number
    with session_scope(res.engine) as session:
        session.execute(update(WebhookOutbox).values(claimed_until=utcnow() - timedelta(seconds=1)))
    with session_scope(res.engine) as session:
        third = deliveries_repo.claim_attempt(session, job_id, hold_s=60, max_in_flight=10)
    assert third is not None and third.attempt == 2
    with session_scope(res.engine) as session:
        # the lapsed holder finishing late changes nothing: the row is the new claim's
        assert (
            deliveries_repo.finish_attempt(session, first, delivered=True, next_attempt_at=None)
            is None
        )
    assert outbox(res, job_id).status == "pending"


def test_a_destination_at_its_cap_waits_and_others_go_on(res: Resources) -> None:
    busy = [finished_job(res) for _ in range(3)]
    elsewhere = finished_job(res, webhook_url="http://127.0.0.2:9/hooks")

    def claim(job_id: str) -> deliveries_repo.Claim | None:
        with session_scope(res.engine) as session:
            return deliveries_repo.claim_attempt(session, job_id, hold_s=60, max_in_flight=2)

    assert claim(busy[0]) is not None and claim(busy[1]) is not None
    assert claim(busy[2]) is None  # two in flight to 127.0.0.1:9 already
    assert claim(elsewhere) is not None
    with session_scope(res.engine) as session:
        # the one refused waits; those in flight do not
        assert deliveries_repo.waiting_for(session, "http://127.0.0.1:9", limit=5) == [busy[2]]


def test_an_attempt_that_frees_a_slot_hands_it_to_a_waiting_event(tmp_path: Path) -> None:
    for res in make_resources(
        tmp_path, secrets=[SecretStr(generate_secret())], max_in_flight_per_destination=1
    ):
        first, second = finished_job(res), finished_job(res)
        make_due(res, first, 2)  # the older of the two
        with session_scope(res.engine) as session:
            held = deliveries_repo.claim_attempt(session, first, hold_s=60, max_in_flight=1)
        assert held is not None
        refused = attempt_delivery(second, res)  # the cap (1) is taken: no attempt, no bounce
        assert (refused.claimed, refused.retry_in_s, refused.hand_off) == (False, None, ())
        with session_scope(res.engine) as session:  # the holder is done
            deliveries_repo.finish_attempt(session, held, delivered=True, next_attempt_at=None)
        third = finished_job(res)
        done = attempt_delivery(second, res)  # forbidden address: exhausted, slot freed
        assert done.claimed and done.hand_off == (third,)


@pytest.mark.parametrize("case", ["pending", "no-webhook", "missing"])
def test_nothing_is_sent_for_unfinished_or_hookless_jobs(res: Resources, case: str) -> None:
    job_id = {
        "pending": lambda: new_job(res),
        "no-webhook": lambda: finished_job(res, webhook_url=""),
        "missing": lambda: str(uuid.uuid4()),
    }[case]()
    outcome = attempt_delivery(job_id, res)
    assert (outcome.succeeded, outcome.retry_in_s) == (False, None)
    assert deliveries(res, job_id) == []


def test_retry_state_lives_in_the_outbox_row(badly_keyed: Resources) -> None:
    res = badly_keyed
    job_id = finished_job(res)

    first = attempt_delivery(job_id, res)  # schedule[0] = 3600 s: beyond a countdown
    assert (first.succeeded, first.retry_in_s) == (False, None)
    [row] = deliveries(res, job_id)
    assert row.error == "signing_error"
    owed = outbox(res, job_id)
    assert owed.status == "pending" and owed.next_attempt_at is not None
    wait_s = (owed.next_attempt_at - utcnow()).total_seconds()
    assert COUNTDOWN_LIMIT_S < wait_s <= 3600 * 1.2 + 1
    assert row.next_attempt_at == owed.next_attempt_at
    assert attempt_delivery(job_id, res).claimed is False  # not due for an hour

    make_due(res, job_id)
    second = attempt_delivery(job_id, res)  # schedule[1] = 5 s: also a broker countdown
    assert second.retry_in_s is not None and 4 <= second.retry_in_s <= 6
    assert outbox(res, job_id).next_attempt_at is not None  # and in the row

    make_due(res, job_id)
    third = attempt_delivery(job_id, res)  # out of schedule: the last attempt
    assert (third.succeeded, third.retry_in_s) == (False, None)
    assert [d.attempt for d in deliveries(res, job_id)] == [1, 2, 3]
    owed = outbox(res, job_id)
    assert (owed.status, owed.next_attempt_at) == (OutboxStatus.EXHAUSTED.value, None)


def test_no_retry_is_planned_past_the_delivery_deadline(tmp_path: Path) -> None:
    for res in make_resources(
        tmp_path, secrets=[SecretStr("not-a-whsec")], retry_schedule=[5.0], delivery_deadline_s=3
    ):
        job_id = finished_job(res)
        outcome = attempt_delivery(job_id, res)
        assert outcome.retry_in_s is None
        assert outbox(res, job_id).status == "exhausted"


def test_the_relay_sends_due_rows_no_message_claimed_once_per_interval(res: Resources) -> None:
    fresh, stale, later = finished_job(res), finished_job(res), finished_job(res)
    make_due(res, stale, RELAY_STALE_S + 5)
    make_due(res, later, -3600)  # due in an hour
    assert relay_due(res) == [stale]  # the fresh one still has its fast-path message
    assert relay_due(res) == []  # relayed: not again for a while
    assert outbox(res, fresh).relayed_at is None


def test_redelivery_starts_a_new_series_and_is_rate_limited(res: Resources) -> None:
    job_id = finished_job(res)
    attempt_delivery(job_id, res)  # forbidden address: exhausted after attempt 1

    def redeliver() -> deliveries_repo.Redelivery:
        with session_scope(res.engine) as session:
            return deliveries_repo.redeliver(
                session,
                subject_id=job_id,
                event_id=event_id_for(job_id, "job.completed"),
                event_type="job.completed",
                destination="http://127.0.0.1:9",
                min_interval_s=60,
            )

    assert redeliver() == deliveries_repo.Redelivery(2)
    owed = outbox(res, job_id)
    assert (owed.status, owed.series_start, owed.attempts) == ("pending", 1, 1)
    again = redeliver()
    assert again.attempt is None and again.retry_after_s is not None
    assert 59 < again.retry_after_s <= 60
    with session_scope(res.engine) as session:
        claim = deliveries_repo.claim_attempt(session, job_id, hold_s=60, max_in_flight=4)
    assert claim is not None and (claim.attempt, claim.series_attempt) == (2, 1)


def test_a_job_finished_before_the_outbox_is_redelivered_after_its_log(res: Resources) -> None:
    job_id = finished_job(res, webhook_url="")
    with session_scope(res.engine) as session:
        deliveries_repo.record_attempt(
            session,
            subject_id=job_id,
            event_id=event_id_for(job_id, "job.completed"),
            event_type="job.completed",
            attempt=4,
            succeeded=False,
            latency_ms=1.0,
        )
        planned = deliveries_repo.redeliver(
            session,
            subject_id=job_id,
            event_id=event_id_for(job_id, "job.completed"),
            event_type="job.completed",
            destination="http://127.0.0.1:9",
            min_interval_s=60,
        )
    assert planned.attempt == 5


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
        outcome = attempt_delivery(job_id, res)
        assert outcome.retry_in_s is not None  # retried: the operator sets the secret
        [row] = deliveries(res, job_id)
        assert (row.error, row.status_code) == ("signing_error", None)


def _at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
