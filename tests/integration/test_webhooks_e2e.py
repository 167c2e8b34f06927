"""Webhooks end to end: a real worker signs, retries and logs deliveries to a loopback receiver.

The session ``stack`` is shared; this module runs its own worker with a short retry schedule
and signing secrets (delivery happens in the worker, so only its environment matters).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks
from prometheus_client.parser import text_string_to_metric_families

from jobs.notify import event_id_for
from jobs.webhooks.signing import generate_secret
from tests.integration.webhook_receiver import ReceivedRequest, WebhookReceiver
from tests.support import images
from tests.support.servers import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

RETRY_SCHEDULE = (0.5, 0.5, 0.5)
SECRETS = (generate_secret(), generate_secret())  # two: a rotation in progress


class HookWorkers:
    """Keep exactly one worker of this module running, with the webhook env a test needs."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.kind: str | None = None
        self.metrics_url = ""
        self.log = Path()

    def use(self, kind: str) -> None:
        if self.kind == kind:
            return
        self.stack.stop_workers()
        self.kind = None
        port = free_port()
        env = {
            "VQ_WEBHOOK_SECRETS": ",".join(SECRETS),
            "VQ_WEBHOOK_RETRY_SCHEDULE": ",".join(str(s) for s in RETRY_SCHEDULE),
            "VQ_WEBHOOK_TIMEOUT_S": "1",
            "VQ_WORKER_METRICS_PORT": str(port),
        }
        if kind == "guarded":
            env["VQ_WEBHOOK_ALLOWED_HOSTS"] = ""  # the front keeps its allow-list
        name = f"hooks-{kind}-{uuid.uuid4().hex[:6]}"
        self.log = self.stack.log_dir / f"worker-{name}.log"
        self.stack.start_worker(concurrency=4, name=name, env=env)
        self.kind = kind
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def log_tail(self) -> str:
        return self.log_text()[-4000:]


@pytest.fixture(scope="module")
def workers(stack: Any) -> Iterator[HookWorkers]:
    running = HookWorkers(stack)
    yield running
    stack.stop_workers()


@pytest.fixture
def worker(workers: HookWorkers) -> HookWorkers:
    """A worker whose allow-list admits 127.0.0.1 (the receiver)."""
    workers.use("allow-loopback")
    return workers


@pytest.fixture
def guarded_worker(workers: HookWorkers) -> HookWorkers:
    """A worker with no allow-list: loopback targets are refused at delivery time."""
    workers.use("guarded")
    return workers


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRETS[0]) as running:
        yield running


def submit(stack: Any, receiver: WebhookReceiver, image: bytes | None = None) -> str:
    resp = httpx.post(
        f"{stack.url}/classify",
        files={"image": ("a.jpg", image or images.jpeg(96, 64, seed=3))},
        data={"webhook_url": receiver.url()},
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["task_id"])


def deliveries(stack: Any, job_id: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{stack.url}/v1/jobs/{job_id}/deliveries", timeout=10)
    assert resp.status_code == 200, resp.text
    return list(resp.json()["deliveries"])


def wait_deliveries(
    stack: Any, workers: HookWorkers, job_id: str, count: int, timeout_s: float = 60
) -> list[Any]:

    def enough() -> list[dict[str, Any]] | None:
        rows = deliveries(stack, job_id)
        return rows if len(rows) >= count else None

    try:
        return list(wait_until(enough, timeout_s, f"{count} delivery rows of job {job_id}"))
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; worker log:\n{workers.log_tail()}") from None


def wait_for_log(workers: HookWorkers, line: str, timeout_s: float = 30) -> None:
    """Wait for the worker's log line saying an attempt ended and what comes next."""
    wait_until(lambda: line in workers.log_text(), timeout_s, f"worker logs {line!r}")


def task_status(stack: Any, job_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{stack.url}/task-status/{job_id}", timeout=10).json())


def event_of(request: ReceivedRequest) -> dict[str, Any]:
    return dict(json.loads(request.body))


def verifies_with_every_secret(request: ReceivedRequest) -> bool:
    for secret in SECRETS:
        standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    return len(request.headers["webhook-signature"].split(" ")) == len(SECRETS)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_retries_until_2xx_with_one_event_id_and_valid_signatures(
    stack: Any, worker: HookWorkers, receiver: WebhookReceiver
) -> None:
    before = scrape(worker.metrics_url)
    receiver.respond(500, body=b"busy")
    receiver.respond(500)
    receiver.respond(200)
    job_id = submit(stack, receiver)

    rows = wait_deliveries(stack, worker, job_id, 3)
    event_id = event_id_for(job_id, "job.completed")
    state = httpx.get(f"{stack.url}/v1/jobs/{job_id}/deliveries", timeout=10).json()["event"]
    assert state == {
        "id": event_id,
        "type": "job.completed",
        "status": "delivered",
        "attempts": 3,
        "next_attempt_at": None,
    }
    assert [r["attempt"] for r in rows] == [1, 2, 3]
    assert {r["event_id"] for r in rows} == {event_id}
    assert {r["event_type"] for r in rows} == {"job.completed"}
    assert [(r["status_code"], r["error"], r["succeeded"]) for r in rows] == [
        (500, "http_500", False),
        (500, "http_500", False),
        (200, None, True),
    ]
    assert all(r["latency_ms"] > 0 for r in rows)
    # each failed attempt's row says when the next one was planned; the last plans none
    times = [datetime.fromisoformat(r["attempted_at"]) for r in rows]
    planned = [r["next_attempt_at"] for r in rows]
    assert planned[2] is None and None not in planned[:2]
    assert all(datetime.fromisoformat(planned[i]) > times[i] for i in (0, 1))
    assert times == sorted(times) and (times[2] - times[0]).total_seconds() >= 0.7

    requests = receiver.requests
    assert len(requests) == 3
    assert {r.headers["webhook-id"] for r in requests} == {event_id}
    assert all(r.verified for r in requests), [r.verify_error for r in requests]
    assert all(verifies_with_every_secret(r) for r in requests)

    events = [event_of(r) for r in requests]
    assert {e["id"] for e in events} == {event_id}
    assert {e["type"] for e in events} == {"job.completed"}
    assert len({e["timestamp"] for e in events}) == 1  # when the job finished, every time
    status = task_status(stack, job_id)
    assert status["status"] == "completed"
    status["result"].pop("image_url")
    for event in events:
        # presigned image links are minted per request: compare everything else
        assert event["data"]["result"].pop("image_url").startswith(stack.s3_endpoint)
        assert event["data"] == status

    after = scrape(worker.metrics_url)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("webhook_success_total") == 1
    assert delta("webhook_failure_total", error="http_500") == 2
    # every attempt observes its latency; an earlier test's event still being retried (a
    # receiver that is gone: another error label) may share this worker's window
    failures = sum(
        after.get(key, 0.0) - before.get(key, 0.0)
        for key in after
        if key[0] == "webhook_failure_total"
    )
    assert delta("webhook_latency_seconds_count") == 1 + failures >= 3


def test_410_gone_stops_after_one_attempt(
    stack: Any, worker: HookWorkers, receiver: WebhookReceiver
) -> None:
    receiver.respond(410)
    job_id = submit(stack, receiver)
    [row] = wait_deliveries(stack, worker, job_id, 1)
    wait_for_log(worker, f"job {job_id}: webhook attempt 1 failed (http_410); retries exhausted")
    receiver.settle()
    assert len(receiver.requests) == 1
    [row] = deliveries(stack, job_id)
    assert (row["attempt"], row["status_code"], row["error"], row["succeeded"]) == (
        1,
        410,
        "http_410",
        False,
    )


def test_a_slow_receiver_times_out_and_is_retried(
    stack: Any, worker: HookWorkers, receiver: WebhookReceiver
) -> None:
    receiver.respond(200, delay_s=3.0)  # past VQ_WEBHOOK_TIMEOUT_S=1
    job_id = submit(stack, receiver)
    rows = wait_deliveries(stack, worker, job_id, 2)
    assert [(r["attempt"], r["status_code"], r["error"]) for r in rows] == [
        (1, None, "timeout"),
        (2, 200, None),
    ]
    # cut at the 1 s timeout: it did not wait for the receiver's answer after 3 s
    assert 900 <= rows[0]["latency_ms"] < 3000
    assert rows[1]["succeeded"] is True
    assert len({r.headers["webhook-id"] for r in receiver.wait_for_requests(2)}) == 1


def test_retry_after_on_429_stretches_the_wait(
    stack: Any, worker: HookWorkers, receiver: WebhookReceiver
) -> None:
    receiver.respond(429, headers={"Retry-After": "2"})  # the schedule alone says 0.5 s
    job_id = submit(stack, receiver)
    rows = wait_deliveries(stack, worker, job_id, 2)
    assert [(r["status_code"], r["error"]) for r in rows] == [(429, "http_429"), (200, None)]
    first, second = (datetime.fromisoformat(r["attempted_at"]) for r in rows)
    assert (second - first).total_seconds() >= 1.9


def test_a_failed_job_sends_job_failed(
    stack: Any, worker: HookWorkers, receiver: WebhookReceiver
) -> None:
    job_id = submit(stack, receiver, images.truncated_jpeg())  # acceptance reads the header only
    [row] = wait_deliveries(stack, worker, job_id, 1)
    assert (row["event_type"], row["succeeded"]) == ("job.failed", True)
    assert row["event_id"] == event_id_for(job_id, "job.failed")
    [request] = receiver.requests
    assert request.verified, request.verify_error
    event = event_of(request)
    assert (event["type"], event["id"]) == ("job.failed", row["event_id"])
    assert event["data"]["status"] == "failed"
    assert event["data"]["error"]["code"] == "invalid_image"
    assert event["data"]["result"] is None
    assert event["data"] == task_status(stack, job_id)
    assert datetime.fromisoformat(event["timestamp"]) <= datetime.now(UTC)


def test_redeliver_sends_the_same_event_again(
    stack: Any, worker: HookWorkers, receiver: WebhookReceiver
) -> None:
    job_id = submit(stack, receiver)
    [first] = wait_deliveries(stack, worker, job_id, 1)
    assert first["succeeded"] is True

    resp = httpx.post(f"{stack.url}/v1/jobs/{job_id}/deliveries/redeliver", timeout=10)
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"status": "scheduled", "attempt": 2}
    # a second one right away is rate limited (VQ_WEBHOOK_REDELIVER_INTERVAL_S, 10 s)
    again = httpx.post(f"{stack.url}/v1/jobs/{job_id}/deliveries/redeliver", timeout=10)
    assert again.status_code == 429, again.text
    assert again.json()["error"]["code"] == "redeliver_rate_limited"
    assert 1 <= int(again.headers["retry-after"]) <= 10
    rows = wait_deliveries(stack, worker, job_id, 2)
    assert [(r["attempt"], r["succeeded"]) for r in rows] == [(1, True), (2, True)]
    assert rows[1]["event_id"] == first["event_id"]
    requests = receiver.wait_for_requests(2)
    assert [r.headers["webhook-id"] for r in requests] == [first["event_id"]] * 2
    assert all(r.verified for r in requests)


def test_redeliver_refuses_unknown_and_hookless_jobs(stack: Any) -> None:
    unknown = httpx.post(f"{stack.url}/v1/jobs/{uuid.uuid4()}/deliveries/redeliver", timeout=10)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "not_found")
    resp = httpx.post(
        f"{stack.url}/classify", files={"image": ("a.jpg", images.jpeg(64, 64))}, timeout=30
    )
    job_id = resp.json()["task_id"]
    hookless = httpx.post(f"{stack.url}/v1/jobs/{job_id}/deliveries/redeliver", timeout=10)
    assert (hookless.status_code, hookless.json()["error"]["code"]) == (409, "conflict")
    assert deliveries(stack, job_id) == []


def test_delivery_time_guard_refuses_loopback_without_the_allow_list(
    stack: Any, guarded_worker: HookWorkers, receiver: WebhookReceiver
) -> None:
    # The front still allows 127.0.0.1 (submission passes); only the worker's guard acts.
    job_id = submit(stack, receiver)
    [row] = wait_deliveries(stack, guarded_worker, job_id, 1)
    assert (row["attempt"], row["status_code"], row["error"], row["succeeded"]) == (
        1,
        None,
        "forbidden_address",
        False,
    )
    wait_for_log(
        guarded_worker,
        f"job {job_id}: webhook attempt 1 failed (forbidden_address); retries exhausted",
    )
    receiver.settle()
    assert len(deliveries(stack, job_id)) == 1  # permanent: no retry
    assert receiver.connections == 0
    assert receiver.requests == []
    assert task_status(stack, job_id)["status"] == "completed"
