"""The end-of-batch webhook on SQLite and a real PostgreSQL, sent to a real receiver on
loopback: every attempt logged, signed with the tenant's secret, retried on the jobs'
schedule, redelivered in a new series at most once per interval."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, update

from jobs.batches.notify import deliver_batch_event, relay_due_batches
from jobs.lease_keeper import LeaseKeeper
from jobs.resources import Resources
from jobs.webhooks.signing import generate_secret
from persistence import batches_repo, deliveries_repo
from persistence.db import session_scope
from persistence.deliveries_repo import BATCHES
from persistence.local_images import LocalImageStore
from persistence.models import BatchWebhookOutbox, utcnow
from tests.integration.batches_factories import migrated_engine, new_batch
from tests.integration.webhook_receiver import WebhookReceiver
from visionqueue.core.secrets import tenant_secret
from visionqueue.core.settings import DatabaseSettings, Settings, WebhookSettings
from visionqueue.core.webhook_events import event_id_for

pytestmark = pytest.mark.integration

MASTER = generate_secret()
OWNER = "tenant-a-owner-id"


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with migrated_engine(request.param, tmp_path) as engine:
        yield engine


@pytest.fixture
def res(engine: Engine, tmp_path: Path) -> Iterator[Resources]:
    settings = Settings(
        data_dir=tmp_path,
        database=DatabaseSettings(url=engine.url.render_as_string(hide_password=False)),
        webhook=WebhookSettings(
            secrets=[SecretStr(MASTER)],
            tenant_secrets="tenant",
            allowed_hosts=["127.0.0.1"],
            retry_schedule=[60.0, 60.0],
            redeliver_interval_s=30,
            timeout_s=5,
        ),
    )
    store = LocalImageStore(tmp_path / "images", "http://127.0.0.1:3000", b"k")
    with httpx.Client() as http:
        yield Resources(settings, engine, store, http, LeaseKeeper(engine, 15))


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    # the receiver verifies with the tenant's own secret: a shared-secret signature fails
    with WebhookReceiver(tenant_secret(MASTER, OWNER)) as running:
        yield running


def finished_batch(engine: Engine, webhook_url: str | None) -> str:
    """A batch of one chunk whose last chunk was just stored (so it completed)."""
    batch_id = new_batch(engine, [["a.jpg", "b.jpg"]], owner=OWNER, webhook_url=webhook_url)
    with session_scope(engine) as session:
        chunk = batches_repo.claim_chunk(session, batch_id, "w1", 30)
        assert chunk is not None
        assert batches_repo.complete_chunk(session, chunk, '{"key":"a.jpg"}\n', 2, 0, "m:1")
    return batch_id


def make_due(engine: Engine, batch_id: str) -> None:
    """Forge the clock: the planned retry is due now (the schedule says 60 s)."""
    with session_scope(engine) as session:
        session.execute(
            update(BatchWebhookOutbox)
            .where(BatchWebhookOutbox.batch_id == batch_id)
            .values(next_attempt_at=utcnow())
        )


def attempts(engine: Engine, batch_id: str) -> list[tuple[int, int | None, str | None, bool]]:
    with session_scope(engine) as session:
        rows = deliveries_repo.list_attempts(session, batch_id, BATCHES)
        assert all(row.latency_ms > 0 for row in rows)
        return [(r.attempt, r.status_code, r.error, r.succeeded) for r in rows]


def event_status(engine: Engine, batch_id: str) -> str | None:
    with session_scope(engine) as session:
        event = deliveries_repo.get_event(session, batch_id, BATCHES)
        return None if event is None else event.status


def test_each_attempt_is_logged_retried_and_signed_with_the_tenants_secret(
    res: Resources, receiver: WebhookReceiver
) -> None:
    batch_id = finished_batch(res.engine, receiver.url())
    receiver.respond(500, body=b"down for a minute")
    first = deliver_batch_event(batch_id, res)
    assert not first.succeeded and first.retry_in_s is not None  # due again on the schedule
    assert attempts(res.engine, batch_id) == [(1, 500, "http_500", False)]
    with session_scope(res.engine) as session:
        (logged,) = deliveries_repo.list_attempts(session, batch_id, BATCHES)
        assert logged.next_attempt_at is not None and logged.next_attempt_at > utcnow()
    assert event_status(res.engine, batch_id) == "pending"
    assert not deliver_batch_event(batch_id, res).succeeded  # not due yet: no request
    receiver.settle()
    assert len(receiver.requests) == 1

    make_due(res.engine, batch_id)
    assert deliver_batch_event(batch_id, res).succeeded
    assert attempts(res.engine, batch_id) == [(1, 500, "http_500", False), (2, 200, None, True)]
    assert event_status(res.engine, batch_id) == "delivered"
    one, two = receiver.requests
    assert one.verified and two.verified, (one.verify_error, two.verify_error)
    event_id = event_id_for(batch_id, "batch.completed")
    assert one.headers["webhook-id"] == two.headers["webhook-id"] == event_id
    body = json.loads(two.body)
    assert (body["type"], body["data"]["id"], body["data"]["done"]) == (
        "batch.completed",
        batch_id,
        2,
    )


def test_a_redelivery_is_a_new_series_at_most_once_per_interval(
    res: Resources, receiver: WebhookReceiver
) -> None:
    batch_id = finished_batch(res.engine, receiver.url())
    assert deliver_batch_event(batch_id, res).succeeded

    def redeliver() -> deliveries_repo.Redelivery:
        with session_scope(res.engine) as session:
            return deliveries_repo.redeliver(
                session,
                subject_id=batch_id,
                event_id=event_id_for(batch_id, "batch.completed"),
                event_type="batch.completed",
                destination="http://127.0.0.1:1",
                min_interval_s=res.settings.webhook.redeliver_interval_s,
                outbox=BATCHES,
            )

    assert redeliver() == deliveries_repo.Redelivery(2)
    again = redeliver()
    assert again.attempt is None and again.retry_after_s is not None
    assert 29 < again.retry_after_s <= 30
    receiver.respond(503)
    outcome = deliver_batch_event(batch_id, res)
    assert not outcome.succeeded
    # the new series retries on the schedule's first step again (60 s), not its end
    assert outcome.retry_in_s is not None and 40 < outcome.retry_in_s < 80
    assert attempts(res.engine, batch_id) == [(1, 200, None, True), (2, 503, "http_503", False)]
    assert [r.headers["webhook-id"] for r in receiver.requests] == [
        event_id_for(batch_id, "batch.completed")
    ] * 2


def test_the_sweep_relays_an_event_whose_message_was_lost(res: Resources) -> None:
    batch_id = finished_batch(res.engine, "http://127.0.0.1:1/hooks")
    assert relay_due_batches(res, every_s=30) == []  # due moments ago: its message is on the way
    with session_scope(res.engine) as session:
        session.execute(
            update(BatchWebhookOutbox).values(next_attempt_at=utcnow() - timedelta(minutes=1))
        )
    assert relay_due_batches(res, every_s=30) == [batch_id]
    assert relay_due_batches(res, every_s=30) == []  # relayed: not again within every_s


def test_cancelled_batches_owe_their_own_event_and_batches_without_a_url_none(
    res: Resources, receiver: WebhookReceiver
) -> None:
    hooked = new_batch(res.engine, [["a"]], owner=OWNER, webhook_url=receiver.url())
    silent = finished_batch(res.engine, None)
    with session_scope(res.engine) as session:
        assert batches_repo.cancel_batch(session, hooked, OWNER) is not None
    assert event_status(res.engine, silent) is None
    assert deliver_batch_event(hooked, res).succeeded
    (request,) = receiver.requests
    assert json.loads(request.body)["type"] == "batch.cancelled"
    assert request.headers["webhook-id"] == event_id_for(hooked, "batch.cancelled")
