"""Faults on a live stack: a hung S3 server, an unreachable classifier, Redis and Postgres restarts.

Each fault is injected into servers of a side stack of its own (``faults_factories``), never
into the shared ones; a test leaves every server of it running again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from persistence.models import Job
from tests.integration.faults_factories import SideStack, TcpProxy, paused, side_stack
from tests.integration.jobs_factories import (
    database,
    job_rows,
    small_jpegs,
    submit_concurrently,
    wait_all_final,
)
from tests.support import images
from tests.support.servers import answers_livez, bento_server, free_port
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
]  # a side stack of its own; restarts Postgres and Redis


@pytest.fixture(scope="module")
def side(server_env: dict[str, str], session_dir: Path) -> Iterator[SideStack]:
    extra = {"VQ_WORKER_PENDING_REQUEUE_AFTER_S": "5", "VQ_WORKER_SWEEP_INTERVAL_S": "2"}
    # /readyz asks the backends on every probe: an outage shows on the first one after it
    extra["VQ_HEALTH_CACHE_S"] = "0"
    with side_stack(server_env, session_dir / "faults", **extra) as running:
        yield running


@pytest.fixture
def faulty(side: SideStack) -> Iterator[SideStack]:
    """The side stack; afterwards its workers are stopped and every server runs again."""
    yield side
    side.stack.stop_workers()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(side.s3.pid, signal.SIGCONT)  # in case a test died while S3 was paused
    if side.redis.proc is None or side.redis.proc.poll() is not None:
        side.redis.start()
    with contextlib.suppress(Exception):
        side.postgres.start()  # fails harmlessly when it is already running


def job_count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def post_one(url: str, seed: int, path: str = "/classify") -> httpx.Response:
    field = "image" if path == "/classify" else "images"
    data = images.jpeg(72, 56, seed=seed)
    return httpx.post(f"{url}{path}", files={field: ("x.jpg", data, "image/jpeg")}, timeout=60)


def assert_unavailable(resp: httpx.Response, code: str) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == code
    assert int(resp.headers["retry-after"]) > 0


def test_hung_s3_is_a_prompt_503_and_running_jobs_finish_once_it_answers(
    faulty: SideStack,
) -> None:
    stack = faulty.stack
    worker = stack.start_worker(concurrency=4, name=f"s3-{uuid.uuid4().hex[:6]}")
    with database(stack.database_url) as engine:
        before = job_count(engine) + 3
        with contextlib.ExitStack() as outage, concurrent.futures.ThreadPoolExecutor(2) as pool:
            with paused(worker):  # the worker meets the outage with the jobs in hand
                ids = submit_concurrently(stack.url, small_jpegs(3, seed=300), concurrency=3)
                outage.enter_context(paused(faulty.s3))
            ready = pool.submit(httpx.get, f"{stack.url}/readyz", timeout=60)
            started = time.monotonic()
            resp = post_one(stack.url, seed=301)
            waited = time.monotonic() - started
            assert_unavailable(resp, "storage_unavailable")
            assert waited < 15, f"a submission hung {waited:.1f}s on a hung S3 server"
            assert job_count(engine) == before
            probe = ready.result()
            assert probe.status_code == 503
            assert probe.json()["checks"]["storage"] != "ok"

            def retried() -> bool:
                rows = job_rows(engine, ids).values()
                return any(r.attempts >= 2 for r in rows)

            wait_until(retried, 45, "a job retried during the S3 outage")
            statuses = {r.status for r in job_rows(engine, ids).values()}
            assert statuses <= {"pending", "processing"}
        rows = wait_all_final(engine, ids, timeout=90)
    assert {r.status for r in rows.values()} == {"completed"}
    assert max(r.attempts for r in rows.values()) >= 2


def test_jobs_wait_for_an_unreachable_classifier_then_complete(faulty: SideStack) -> None:
    port = free_port()  # nothing listens here until the proxy opens it
    front_port = int(faulty.stack.url.rsplit(":", 1)[1])
    detached = dataclasses.replace(
        faulty.stack,
        env={**faulty.stack.env, "VQ_WORKER_CLASSIFIER_URL": f"http://127.0.0.1:{port}"},
        workers=[],
    )
    proxy: TcpProxy | None = None
    try:
        detached.start_worker(concurrency=4, name=f"noclf-{uuid.uuid4().hex[:6]}")
        ids = submit_concurrently(faulty.stack.url, small_jpegs(3, seed=400), concurrency=3)
        with database(faulty.stack.database_url) as engine:

            def all_retried() -> bool:
                rows = job_rows(engine, ids).values()
                return len(rows) == 3 and all(r.attempts >= 2 for r in rows)

            wait_until(all_retried, 30, "every job retried against the dead classifier")
            assert {r.status for r in job_rows(engine, ids).values()} <= {"pending", "processing"}
            proxy = TcpProxy(port, front_port)
            rows = wait_all_final(engine, ids, timeout=60)
        assert {r.status for r in rows.values()} == {"completed"}
        assert all(r.result and len(r.result["predictions"]) == 5 for r in rows.values())
    finally:
        detached.stop_workers()
        if proxy is not None:
            proxy.close()


def test_readyz_says_why_when_the_classifier_cannot_load(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    """A classifier that crashes at start-up: /readyz answers promptly and names the model."""
    env = {
        **server_env,
        "VQ_DATA_DIR": str(tmp_path / "data"),
        "VQ_DEVICE": "no-such-device",  # torch refuses it: the classifier worker exits
    }
    with bento_server(env, tmp_path / "bento.log", 120, ready=answers_livez) as url:
        started = time.monotonic()
        ready = httpx.get(f"{url}/readyz", timeout=60)
        assert time.monotonic() - started < 15, "a readiness probe must not hang"
        assert ready.status_code == 503
        body = ready.json()
        assert body["ready"] is False
        assert body["checks"]["model"] != "ok"
        assert "model" in body["reason"]
        predict = httpx.post(
            f"{url}/predict", files={"image": ("a.jpg", images.jpeg(64, 64))}, timeout=60
        )
        assert_unavailable(predict, "model_not_ready")


def test_redis_restart_loses_messages_and_the_sweeper_requeues_the_jobs(
    faulty: SideStack,
) -> None:
    stack = faulty.stack
    ids = submit_concurrently(stack.url, small_jpegs(4, seed=500), concurrency=4)
    faulty.redis.kill()  # nothing on disk: the 4 messages are gone
    with database(stack.database_url) as engine:
        before = job_count(engine)
        started = time.monotonic()
        assert_unavailable(post_one(stack.url, seed=501), "broker_unavailable")
        assert_unavailable(post_one(stack.url, seed=502, path="/v1/jobs"), "broker_unavailable")
        assert time.monotonic() - started < 20
        assert job_count(engine) == before, "a refused submission left a row"
        assert {r.status for r in job_rows(engine, ids).values()} == {"pending"}

        faulty.redis.start()
        client = redis.Redis.from_url(faulty.redis.url)
        try:
            assert client.dbsize() == 0
        finally:
            client.close()
        stack.start_worker(concurrency=4, name=f"beat-{uuid.uuid4().hex[:6]}", beat=True)
        rows = wait_all_final(engine, ids, timeout=60)
        assert {r.status for r in rows.values()} == {"completed"}
        # the front reconnects by itself
        later = submit_concurrently(stack.url, small_jpegs(1, seed=503))
        assert wait_all_final(engine, later, timeout=30)[later[0]].status == "completed"


def test_postgres_restart_is_503_meanwhile_and_jobs_finish_after(faulty: SideStack) -> None:
    stack = faulty.stack
    name = f"pg-{uuid.uuid4().hex[:6]}"
    worker = stack.start_worker(concurrency=4, name=name)
    log = stack.log_dir / f"worker-{name}.log"
    with database(stack.database_url) as engine:
        with paused(worker):  # the worker meets the outage with the jobs in hand
            ids = submit_concurrently(stack.url, small_jpegs(4, seed=600), concurrency=4)
            faulty.postgres.stop("immediate")
        try:
            calls: list[tuple[str, str]] = [
                ("GET", f"/task-status/{ids[0]}"),
                ("GET", f"/v1/jobs/{ids[0]}"),
                ("GET", "/v1/jobs"),
                ("DELETE", f"/v1/jobs/{ids[1]}"),
            ]
            assert_unavailable(post_one(stack.url, seed=601), "database_unavailable")
            for method, path in calls:
                resp = httpx.request(method, f"{stack.url}{path}", timeout=30)
                assert_unavailable(resp, "database_unavailable")
            ready = httpx.get(f"{stack.url}/readyz", timeout=30)
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"] != "ok"

            def retrying() -> bool:
                return "database_unavailable; retry" in log.read_text(errors="replace")

            wait_until(retrying, 30, "the worker retrying while Postgres is down")
        finally:
            faulty.postgres.start()
        rows = wait_all_final(engine, ids, timeout=90)
    assert {r.status for r in rows.values()} == {"completed"}
    resp = httpx.get(f"{stack.url}/task-status/{ids[0]}", timeout=30)
    assert resp.status_code == 200
    assert resp.json()["status"] == "completed"
