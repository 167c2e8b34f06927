"""Job leases on a migrated SQLite file: claims, renewals, recovery sweeps, bounded attempts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from kombu import Connection
from sqlalchemy import Engine, update

from jobs import fs_broker
from jobs.classify import ATTEMPTS_EXHAUSTED, exhaust_if_spent
from jobs.fs_broker import queue_folder
from jobs.lease_keeper import LeaseKeeper
from jobs.maintenance import SWEEP_LOCK, sweep_once
from jobs.resources import Resources
from persistence import deliveries_repo, job_leases, jobs_repo, locks
from persistence.db import dispose_engines, get_engine, session_scope
from persistence.local_images import LocalImageStore
from persistence.migrate import upgrade_database
from persistence.models import Job, utcnow
from tests.support.rows import create_job_row
from visionqueue.core.settings import DatabaseSettings, Settings, WorkerSettings

LEASE = 15.0


@pytest.fixture
def res(tmp_path: Path) -> Iterator[Resources]:
    url = f"sqlite:///{tmp_path}/vq.db"
    upgrade_database(url)
    settings = Settings(
        data_dir=tmp_path,
        database=DatabaseSettings(url=url),
        worker=WorkerSettings(max_attempts=3, lease_s=LEASE, sweep_interval_s=10),
    )
    engine = get_engine(url)
    store = LocalImageStore(tmp_path / "images", "http://127.0.0.1:3000", b"k")
    with httpx.Client() as http:
        yield Resources(settings, engine, store, http, LeaseKeeper(engine, LEASE))
    dispose_engines(url)


def new_job(engine: Engine, webhook_url: str | None = None) -> str:
    return create_job_row(engine, image_size=10, width=2, height=2, webhook_url=webhook_url)


def claim(engine: Engine, job_id: str, holder: str) -> job_leases.ClaimedJob | None:
    with session_scope(engine) as session:
        return job_leases.claim(session, job_id, holder=holder, lease_s=LEASE, max_attempts=3)


def row(engine: Engine, job_id: str) -> Job:
    with session_scope(engine) as session:
        job = jobs_repo.get_job_by_id(session, job_id)
    assert job is not None
    return job


def lapse(engine: Engine, job_id: str, seconds: float = 1.0) -> None:
    with session_scope(engine) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_until=utcnow() - timedelta(seconds=seconds))
        )


def test_a_batch_claims_only_its_claimable_jobs(res: Resources) -> None:
    free, leased, done = (new_job(res.engine) for _ in range(3))
    assert claim(res.engine, leased, "other") is not None
    with session_scope(res.engine) as session:
        assert jobs_repo.cancel_job(session, done, None)
    with session_scope(res.engine) as session:
        claims = job_leases.claim_batch(
            session, [free, leased, done], holder="w", lease_s=LEASE, max_attempts=3
        )
    assert list(claims) == [free, leased, done]  # the caller's order, each id once
    got = claims[free]
    assert got is not None and got.id == free and got.attempts == 1
    assert claims[leased] is None and claims[done] is None
    assert row(res.engine, free).leased_by == "w"
    assert row(res.engine, leased).leased_by == "other"


def test_a_live_lease_keeps_a_slow_job_from_running_twice(res: Resources) -> None:
    job_id = new_job(res.engine)
    first = claim(res.engine, job_id, "worker-a")
    assert first is not None and first.attempts == 1
    assert claim(res.engine, job_id, "worker-b") is None  # a redelivered message
    keeper = LeaseKeeper(res.engine, LEASE)
    keeper.holder = "worker-a"
    keeper.hold(job_id)
    try:
        before = row(res.engine, job_id).lease_until
        assert keeper.renew_now() == 1
        after = row(res.engine, job_id).lease_until
        assert before is not None and after is not None and after >= before
    finally:
        keeper.stop()


def test_a_lapsed_lease_is_taken_over_and_the_late_finisher_loses(res: Resources) -> None:
    job_id = new_job(res.engine)
    assert claim(res.engine, job_id, "dead") is not None
    lapse(res.engine, job_id)
    second = claim(res.engine, job_id, "alive")
    assert second is not None and second.attempts == 2
    with session_scope(res.engine) as session:
        # the "dead" worker was only slow: its result is refused, the new holder's kept
        assert not jobs_repo.complete_job(session, job_id, {}, "m", "w", holder="dead")
        assert jobs_repo.complete_job(session, job_id, {}, "m", "w", holder="alive")
    done = row(res.engine, job_id)
    assert (done.status, done.leased_by, done.lease_until) == ("completed", None, None)


def test_the_sweep_requeues_a_dead_workers_job_and_leaves_live_ones(res: Resources) -> None:
    dead, live = new_job(res.engine), new_job(res.engine)
    claim(res.engine, dead, "dead")
    claim(res.engine, live, "live")
    lapse(res.engine, dead)
    report = sweep_once(res)
    assert report.requeued == [dead]
    requeued = row(res.engine, dead)
    assert (requeued.status, requeued.leased_by) == ("pending", None)
    assert requeued.lease_until is not None and requeued.lease_until > utcnow()
    assert row(res.engine, live).status == "processing"
    assert sweep_once(res).requeued == []  # not sent again before its grace ends


def test_a_retry_whose_message_was_lost_is_requeued_after_its_due_time(
    res: Resources,
) -> None:
    job_id = new_job(res.engine)
    claim(res.engine, job_id, "w")
    with session_scope(res.engine) as session:
        assert job_leases.release_for_retry(session, job_id, "w", due_in_s=30)
    assert row(res.engine, job_id).status == "pending"
    assert sweep_once(res).requeued == []  # the countdown message is due in 30 s
    lapse(res.engine, job_id)
    assert sweep_once(res).requeued == [job_id]


def test_a_job_out_of_attempts_fails_with_a_code_and_owes_its_event(res: Resources) -> None:
    job_id = new_job(res.engine, webhook_url="http://127.0.0.1:9/hook")
    for n in range(3):
        assert claim(res.engine, job_id, f"w{n}") is not None
        lapse(res.engine, job_id)
    assert claim(res.engine, job_id, "w3") is None  # 3 attempts used
    report = sweep_once(res)
    assert report.failed == 1 and report.requeued == []
    assert report.relayed == [job_id]  # its job.failed event goes out now
    failed = row(res.engine, job_id)
    assert (failed.status, failed.error_code, failed.attempts) == ("failed", ATTEMPTS_EXHAUSTED, 3)
    with session_scope(res.engine) as session:
        owed = deliveries_repo.get_event(session, job_id)
        assert owed is not None and owed.event_type == "job.failed"
        assert exhaust_if_spent(session, job_id, 3).status == "skipped"  # final already


def test_one_sweep_at_a_time(res: Resources) -> None:
    with session_scope(res.engine) as session:
        assert locks.acquire(session, SWEEP_LOCK, "someone-else", 60)
    assert sweep_once(res).skipped
    with session_scope(res.engine) as session:
        locks.release(session, SWEEP_LOCK, "someone-else")
    assert not sweep_once(res).skipped
    with session_scope(res.engine) as session:
        # a holder that died leaves the lock to expire
        assert locks.acquire(session, SWEEP_LOCK, "dies", 0.001)
    time.sleep(0.01)
    assert not sweep_once(res).skipped


def test_a_received_job_carries_its_receivers_lease_until_the_receiver_dies(
    res: Resources,
) -> None:
    # the embedded broker forgets a message once received: the job itself must say who holds it
    received, queued = new_job(res.engine), new_job(res.engine)
    keeper = LeaseKeeper(res.engine, LEASE)
    keeper.reserve(received)
    try:
        wait = row(res.engine, received)
        for _ in range(100):
            if wait.leased_by == keeper.holder:
                break
            time.sleep(0.05)
            wait = row(res.engine, received)
        assert (wait.status, wait.leased_by) == ("pending", keeper.holder)
        assert sweep_once(res).requeued == []  # a live receiver's job is left alone
        claimed = claim(res.engine, received, keeper.holder)
        assert claimed is not None and claimed.attempts == 1  # receiving is not an attempt
    finally:
        keeper.stop()
    other = new_job(res.engine)
    with session_scope(res.engine) as session:  # received by a process that then died
        assert job_leases.reserve(session, "dead", [other], LEASE) == 1
    assert sweep_once(res).requeued == []  # its lease is still live
    lapse(res.engine, other)
    assert sweep_once(res).requeued == [other]
    assert row(res.engine, queued).leased_by is None  # never received: untouched


def age(engine: Engine, job_id: str, seconds: float) -> None:
    with session_scope(engine) as session:
        past = utcnow() - timedelta(seconds=seconds)
        session.execute(update(Job).where(Job.id == job_id).values(created_at=past, queued_at=past))


def test_a_job_whose_message_died_with_its_receiver_is_sent_again(res: Resources) -> None:
    # the embedded broker deletes a message file as a worker takes it; a worker killed before
    # it leased the job leaves it pending, unleased, with no message anywhere
    folder = queue_folder(res.settings)
    assert folder is not None
    folder.mkdir(parents=True)
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder)}
    with Connection(
        res.settings.broker_url, transport=fs_broker.PATH, transport_options=options
    ) as conn:
        lost_a, lost_b, queued = new_job(res.engine), new_job(res.engine), new_job(res.engine)
        for job_id in (lost_a, lost_b, queued):
            conn.default_channel._put("q", {"headers": fs_broker.job_headers(job_id), "body": ""})
            time.sleep(0.002)  # names start with the millisecond: taken in this order
        assert fs_broker.queued_job_ids(folder) == {lost_a, lost_b, queued}
        conn.default_channel._get("q")  # a worker takes the two oldest messages...
        conn.default_channel._get("q")  # ...and dies before it leases their jobs
    young = new_job(res.engine)  # committed, its message not yet published
    assert fs_broker.queued_job_ids(folder) == {queued}
    for job_id in (lost_a, lost_b, queued):
        age(res.engine, job_id, 60)
    report = sweep_once(res)
    # a job still queued, or too young for a live receiver to have leased it, is left alone
    assert report.requeued == [lost_a, lost_b]
    assert row(res.engine, queued).lease_until is None
    assert row(res.engine, young).lease_until is None
    assert sweep_once(res).requeued == []  # the re-sent message has its grace to be claimed
    assert row(res.engine, lost_a).status == "pending"


def test_a_broker_that_cannot_say_what_was_taken_does_not_stop_the_sweep(
    res: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis down during a sweep: the lapsed leases are still found (in the database alone)
    from kombu.exceptions import OperationalError

    import jobs.maintenance as maintenance

    def redis_down(app: object, queue: str) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(maintenance, "queue_folder", lambda settings: None)  # a Redis deployment
    monkeypatch.setattr(maintenance, "redis_view", redis_down)
    dead = new_job(res.engine)
    claim(res.engine, dead, "dead")
    lapse(res.engine, dead)
    assert sweep_once(res).requeued == [dead]
