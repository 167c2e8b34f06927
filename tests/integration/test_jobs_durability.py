"""Jobs survive load, a SIGKILLed worker and a dead backend: none lost, none done twice."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis
from celery import Celery
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from jobs.celery_app import SWEEP_TASK
from persistence.image_keys import key_for
from persistence.models import Job
from tests.integration.jobs_factories import (
    FINAL_STATUSES,
    broker_idle,
    database,
    job_rows,
    small_jpegs,
    status_counts,
    submit_concurrently,
    wait_all_final,
    worker_outcomes,
)
from tests.support.servers import bento_server, free_port, model_loaded
from tests.support.stack import Stored
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _stop_workers_after(stack):  # type: ignore[no-untyped-def]
    yield
    stack.stop_workers()


@pytest.mark.slow
def test_300_concurrent_jobs_all_complete_exactly_once(stack) -> None:  # type: ignore[no-untyped-def]
    run = uuid.uuid4().hex
    names = [f"dur-{run[:6]}-{i}" for i in range(2)]
    for name in names:
        stack.start_worker(name=name)
    logs = [stack.log_dir / f"worker-{name}.log" for name in names]
    prefix = stack.env["VQ_BROKER_QUEUE_PREFIX"]
    wait_until(lambda: broker_idle(stack.broker_url, prefix), 30, "earlier messages drained")
    before = [worker_outcomes(log)["completed"] for log in logs]
    payloads = small_jpegs(300, seed=1000)
    started = time.monotonic()

    ids = submit_concurrently(stack.url, payloads, concurrency=32, metadata={"run": run})
    submitted_s = time.monotonic() - started
    assert len(set(ids)) == 300

    with database(stack.database_url) as engine:
        rows = wait_all_final(engine, ids, timeout=120)
        finished_s = time.monotonic() - started
        with Session(engine) as session:
            in_db = session.scalar(
                select(func.count()).select_from(Job).where(Job.metadata_["run"].as_string() == run)
            )

    # exactly the 300 accepted jobs exist, each once, each completed on its first attempt
    assert in_db == 300
    assert set(rows) == set(ids)
    assert {row.status for row in rows.values()} == {"completed"}
    assert sorted(row.metadata_["n"] for row in rows.values()) == list(range(300))
    assert {row.attempts for row in rows.values()} == {1}
    for row in rows.values():
        assert row.queued_at is not None
        assert row.created_at <= row.started_at <= row.finished_at  # type: ignore[operator]
        assert row.result is not None and len(row.result["predictions"]) == 5
        assert row.weights_origin == "random-init:seed=0"

    # the workers ran classify_job to completion exactly 300 times, and both took a share
    completed = [worker_outcomes(log)["completed"] - n for log, n in zip(logs, before, strict=True)]
    assert sum(completed) == 300 and min(completed) > 0, completed
    wait_until(lambda: broker_idle(stack.broker_url, prefix), 10, "broker drained")
    print(f"300 jobs: submitted in {submitted_s:.1f}s, all completed in {finished_s:.1f}s")


def test_sigkilled_worker_jobs_are_redelivered_and_completed_once(stack) -> None:  # type: ignore[no-untyped-def]
    run = uuid.uuid4().hex
    first = stack.start_worker(name=f"doomed-{run[:6]}")
    prefix = stack.env["VQ_BROKER_QUEUE_PREFIX"]
    wait_until(lambda: broker_idle(stack.broker_url, prefix), 30, "earlier messages drained")
    ids = submit_concurrently(stack.url, small_jpegs(40, seed=5000), metadata={"run": run})

    with database(stack.database_url) as engine:
        # kill it once it has finished something and works on more, most of the batch left
        def mid_batch() -> bool:
            counts = status_counts(engine, ids)
            return counts["completed"] > 0 and counts["processing"] > 0

        wait_until(mid_batch, timeout=60, what="some jobs done, some in flight", interval=0.05)
        stack.kill_worker(first)
        at_kill = job_rows(engine, ids)
        in_flight = {i for i, row in at_kill.items() if row.status == "processing"}
        done_before = {i for i, row in at_kill.items() if row.status == "completed"}
        assert in_flight, "the worker was killed with no job in flight"
        assert len(done_before) < 40

        # with the sweeper, as every deployment runs: a message Redis gives back after the
        # visibility timeout (15 s) while the dead worker's lease (15 s from its last
        # renewal) still holds is dropped, and the sweep sends it again once the lease lapses
        stack.start_worker(name=f"rescuer-{run[:6]}", beat=True)
        killed_at = time.monotonic()
        try:
            rows = wait_all_final(engine, ids, timeout=75)
        except TimeoutError as exc:  # say which jobs and what the workers logged of them
            stuck = {
                i: r for i, r in job_rows(engine, ids).items() if r.status not in FINAL_STATUSES
            }
            logs = [stack.log_dir / f"worker-{w}-{run[:6]}.log" for w in ("doomed", "rescuer")]
            lines = [
                f"{log.name}: {line}"
                for log in logs
                for line in log.read_text(errors="replace").splitlines()
                if any(i in line for i in stuck) or "retry" in line or "ERROR" in line
            ]
            rows_text = {
                i: (r.status, r.attempts, r.leased_by, str(r.lease_until)) for i, r in stuck.items()
            }
            lines.append(f"outcomes: {dict(worker_outcomes(*logs))}; now {datetime.now(UTC)}")
            broker = redis.Redis.from_url(stack.broker_url)
            lines += [f"redis {key!r}: {broker.type(key)!r}" for key in broker.keys(f"*{prefix}*")]
            raise AssertionError(f"{exc}\nstuck: {rows_text}\n" + "\n".join(lines[-60:])) from None
        recovered_s = time.monotonic() - killed_at
    wait_until(lambda: broker_idle(stack.broker_url, prefix), 10, "broker drained")

    assert {row.status for row in rows.values()} == {"completed"}
    for job_id, row in rows.items():
        assert row.result is not None and row.finished_at is not None
        if job_id in in_flight:
            assert row.attempts == 2, (job_id, row.attempts)  # claimed again, once
        else:
            assert row.attempts == 1, (job_id, row.attempts)
        if job_id in done_before:
            assert row.finished_at == at_kill[job_id].finished_at  # not completed again
    # the new worker completed exactly the jobs the dead one had not
    rescued = worker_outcomes(stack.log_dir / f"worker-rescuer-{run[:6]}.log")
    assert rescued["completed"] == 40 - len(done_before), rescued
    print(
        f"killed with {len(in_flight)} in flight, {len(done_before)} done; "
        f"all 40 completed {recovered_s:.1f}s after the new worker started"
    )


@pytest.fixture(scope="module")
def fronts_with_a_dead_backend(stack):  # type: ignore[no-untyped-def]
    """Two more fronts on the stack's DB and S3: one whose broker, one whose S3 is down."""
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    with (
        bento_server(
            {**stack.env, "VQ_BROKER_URL": f"redis://{dead}/0"},
            stack.log_dir / "no-broker.log",
            ready=model_loaded,
        ) as no_broker,
        bento_server(
            {**stack.env, "VQ_S3_ENDPOINT": f"http://{dead}"},
            stack.log_dir / "no-s3.log",
            ready=model_loaded,
        ) as no_s3,
    ):
        yield {"broker": no_broker, "storage": no_s3}


def test_the_sweeper_requeues_a_job_whose_worker_and_message_were_lost(stack) -> None:  # type: ignore[no-untyped-def]
    stack.stop_workers()
    prefix = stack.env["VQ_BROKER_QUEUE_PREFIX"]
    resp = httpx.post(
        f"{stack.url}/classify", files={"image": ("a.jpg", small_jpegs(1, seed=77)[0])}, timeout=30
    )
    job_id = resp.json()["task_id"]
    # a worker claimed it an hour ago and died; the broker lost the message (Redis restarted
    # without persistence, or the filesystem broker of the embedded default)
    client = redis.Redis.from_url(stack.broker_url)
    assert client.delete(f"{prefix}{prefix}visionqueue") == 1  # the key carries the prefix twice
    client.close()
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with database(stack.database_url) as engine:
        with Session(engine) as session, session.begin():
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    status="processing", attempts=1, started_at=an_hour_ago, queued_at=an_hour_ago
                )
            )
        # its start-up sweep may find the job before the trigger below does: either is the
        # sweeper (the message is gone, so nothing else can claim the job)
        stack.start_worker(name=f"sweeper-{uuid.uuid4().hex[:6]}")
        trigger = Celery("sweep-trigger", broker=stack.broker_url)
        trigger.conf.broker_transport_options = {"global_keyprefix": prefix}
        try:
            trigger.send_task(SWEEP_TASK, queue=f"{prefix}visionqueue")
        finally:
            trigger.close()
        row = wait_all_final(engine, [job_id], timeout=30)[job_id]
    assert row.status == "completed"
    assert row.attempts == 2
    assert row.started_at is not None and row.started_at > an_hour_ago


@pytest.mark.slow  # two more Bento servers
@pytest.mark.parametrize("backend", ["broker", "storage"])
def test_readyz_names_the_dead_backend_and_only_it(  # type: ignore[no-untyped-def]
    fronts_with_a_dead_backend, backend
) -> None:
    resp = httpx.get(f"{fronts_with_a_dead_backend[backend]}/readyz", timeout=30)
    assert resp.status_code == 503
    body = resp.json()
    assert body["ready"] is False
    down = {name for name, verdict in body["checks"].items() if verdict != "ok"}
    assert down == {backend}, body["checks"]
    assert body["reason"].startswith(f"{backend}: "), body["reason"]


@pytest.mark.slow  # two more Bento servers
@pytest.mark.parametrize("backend", ["broker", "storage"])
def test_submission_with_a_dead_backend_is_503_and_leaves_no_job(  # type: ignore[no-untyped-def]
    stack, fronts_with_a_dead_backend, backend
) -> None:
    url = fronts_with_a_dead_backend[backend]
    stored = Stored(stack)
    rows_before, objects_before = stored.job_count(), stored.object_keys()
    uploads = [small_jpegs(1, seed=7)[0], *small_jpegs(3)]
    one = httpx.post(f"{url}/classify", files={"image": ("a.jpg", uploads[0])}, timeout=60)
    many = httpx.post(
        f"{url}/v1/jobs",
        files=[("images", (f"{i}.jpg", d, "image/jpeg")) for i, d in enumerate(uploads[1:])],
        timeout=60,
    )
    for resp in (one, many):
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == f"{backend}_unavailable"
        if backend == "broker":
            assert int(resp.headers["retry-after"]) > 0
    assert stored.job_count() == rows_before  # no job a client was not told about
    new_objects = stored.object_keys() - objects_before
    if backend == "storage":
        assert new_objects == set()
    else:
        # the images went in before the broker refused; no row refers to them, so the
        # hourly orphan purge deletes them: nothing beyond the uploads themselves is left
        assert new_objects <= {key_for(data) for data in uploads}


@pytest.mark.slow  # two more Bento servers
def test_a_keyed_submission_the_broker_refused_is_kept_for_its_replays(  # type: ignore[no-untyped-def]
    stack, fronts_with_a_dead_backend
) -> None:
    # Request A commits, its publish fails; a retry B with the same key may already hold
    # A's ids: they are kept (202), never withdrawn, and the sweeper enqueues them.
    key = f"race-{uuid.uuid4().hex}"
    image = {"images": ("a.jpg", small_jpegs(1, seed=88)[0])}
    headers = {"Idempotency-Key": key}
    first = httpx.post(
        f"{fronts_with_a_dead_backend['broker']}/v1/jobs", files=image, headers=headers, timeout=60
    )
    assert first.status_code == 202, first.text
    replay = httpx.post(f"{stack.url}/v1/jobs", files=image, headers=headers, timeout=60)
    assert replay.status_code == 200, replay.text
    assert replay.headers["Idempotent-Replayed"] == "true"
    job_id = first.json()["jobs"][0]["id"]
    assert replay.json()["jobs"][0]["id"] == job_id
    stack.start_worker(name=f"relay-{uuid.uuid4().hex[:6]}", beat=True)
    with database(stack.database_url) as engine:
        row = wait_all_final(engine, [job_id], timeout=120)[job_id]
    assert row.status == "completed" and row.attempts == 1
    assert httpx.get(f"{stack.url}/task-status/{job_id}", timeout=30).status_code == 200
