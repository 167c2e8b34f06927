"""The sweeper on a real Redis broker: which pending jobs lost their message with a dead worker.

kombu takes a message in two steps (BRPOP off the queue, then a note in the unacked hash); a
worker can die after either. Both leave a pending job that no live worker leased, and the
sweep sends its message again; a job whose message is still queued is left alone.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import update

import jobs.maintenance as maintenance
from jobs.celery_app import CLASSIFY_TASK, Queues, create_celery_app
from jobs.fs_broker import job_headers
from jobs.lease_keeper import LeaseKeeper
from jobs.redis_unacked import redis_view
from jobs.resources import Resources
from persistence.db import dispose_engines, get_engine, session_scope
from persistence.local_images import LocalImageStore
from persistence.migrate import upgrade_database
from persistence.models import Job, utcnow
from tests.support.rows import create_job_row
from tests.support.stack import REDIS_URL
from visionqueue.core.settings import BrokerSettings, DatabaseSettings, Settings, WorkerSettings

pytestmark = pytest.mark.integration

BROKER = REDIS_URL.format(db=13)


@pytest.fixture
def res(tmp_path: Path) -> Iterator[Resources]:
    url = f"sqlite:///{tmp_path}/vq.db"
    upgrade_database(url)
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    settings = Settings(
        data_dir=tmp_path,
        database=DatabaseSettings(url=url),
        broker=BrokerSettings(url=BROKER, queue_prefix=prefix),
        worker=WorkerSettings(max_attempts=3, lease_s=15, sweep_interval_s=5),
    )
    engine = get_engine(url)
    store = LocalImageStore(tmp_path / "images", "http://127.0.0.1:3000", b"k")
    try:
        with httpx.Client() as http:
            yield Resources(settings, engine, store, http, LeaseKeeper(engine, 15))
    finally:
        dispose_engines(url)
        client = redis.Redis.from_url(BROKER)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        client.close()


def queued_job(res: Resources, app: object) -> str:
    job_id = create_job_row(res.engine)
    with session_scope(res.engine) as session:
        past = utcnow() - timedelta(seconds=60)  # long enough for a live worker to lease it
        session.execute(update(Job).where(Job.id == job_id).values(created_at=past, queued_at=past))
    app.send_task(CLASSIFY_TASK, args=[job_id], headers=job_headers(job_id))  # type: ignore[attr-defined]
    return job_id


DIE_AFTER_TAKING = """
import os, signal, sys
from jobs.celery_app import Queues, create_celery_app
from visionqueue.core.settings import BrokerSettings, Settings

settings = Settings(broker=BrokerSettings(url=sys.argv[1], queue_prefix=sys.argv[2]))
app = create_celery_app(settings)
queue = Queues.of(settings).jobs
conn = app.connection_for_read()
channel = conn.channel()
if sys.argv[3] == "noted":  # kombu's two steps: off the list, into the unacked hash
    assert channel.basic_get(queue, no_ack=False) is not None
else:  # the first step only
    assert channel.client.rpop(queue) is not None
os.kill(os.getpid(), signal.SIGKILL)  # no channel close: nothing is given back
"""


def die_after_taking(res: Resources, step: str) -> None:
    """Take the oldest queued message in a process that is killed right after ``step``."""
    broker = res.settings.broker
    argv = [sys.executable, "-c", DIE_AFTER_TAKING, broker.url, broker.queue_prefix, step]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_a_message_taken_by_a_worker_that_died_is_sent_again_at_either_step(
    res: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_celery_app(res.settings)
    queue = Queues.of(res.settings).jobs
    noted, popped, queued = (queued_job(res, app) for _ in range(3))
    # a worker took the oldest message and noted it in the unacked hash, then died; another
    # took the next one off the list (BRPOP) and died before noting it
    die_after_taking(res, "noted")
    die_after_taking(res, "popped")
    view = redis_view(app, queue)
    assert view is not None
    assert view.queued == {queued} and view.unacked == {noted}
    assert [view.taken(job) for job in (noted, popped, queued)] == [True, True, False]

    monkeypatch.setattr(maintenance, "celery_app", app)
    report = maintenance.sweep_once(res)
    assert sorted(report.requeued) == sorted([noted, popped])
    assert maintenance.sweep_once(res).requeued == []  # the re-sent messages have their grace


def test_behind_a_long_queue_only_noted_messages_count_as_taken(res: Resources) -> None:
    app = create_celery_app(res.settings)
    queue = Queues.of(res.settings).jobs
    jobs = [queued_job(res, app) for _ in range(4)]
    die_after_taking(res, "noted")
    view = redis_view(app, queue, limit=2)  # 3 still queued: too many to read
    assert view is not None and view.queued is None
    assert [view.taken(job) for job in jobs] == [True, False, False, False]
