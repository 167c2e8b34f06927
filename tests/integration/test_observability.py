"""Observability on the real stack: the dashboard's metrics live and right, a real Prometheus,
JSON logs with correlation ids and no secrets, and Flower on the embedded broker.

The module runs its own front (2 front + 2 classifier processes, JSON logs) on the session
stack's backends, in a BentoML home of its own: ``bentoml serve`` wipes the home's Prometheus
multiprocess folder at start, so a shared home would mix or lose other servers' metrics.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.jobs_factories import (
    database,
    small_jpegs,
    wait_all_final,
    worker_outcomes,
)
from tests.integration.observability_factories import (
    Scrape,
    grafana_to_promql,
    metrics_worker,
    predict_many,
    prometheus_config,
    prometheus_query,
    prometheus_server,
    scalar,
)
from tests.integration.webhook_receiver import WebhookReceiver
from tests.support import images
from tests.support.grafana import (
    SYNTHETIC,
    all_targets,
    load_dashboard,
    promql_metric_names,
)
from tests.support.prerequisites import require_binary
from tests.support.servers import bento_server, free_port, isolated_bentoml_home, spawn, stop
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
]  # a front, a workload and Prometheus of its own

N_SYNC = 4
M_JOBS = 3
SECRET_ENV = ("VQ_S3_SECRET_KEY", "VQ_SIGNING_KEY", "VQ_WEBHOOK_SECRETS")
WORKER_SECRETS = {
    "VQ_SIGNING_KEY": "obs-signing-key-5d1e0b",
    "VQ_WEBHOOK_SECRETS": "whsec_b2JzZXJ2YWJpbGl0eS10ZXN0LXNlY3JldC0zMmJ5dGU=",
}


def dashboard_exprs() -> list[str]:
    return [target["expr"] for target in all_targets(load_dashboard())]


def json_records(log: Path, offset: int = 0) -> list[dict[str, Any]]:
    """Return the JSON lines of a log (BentoML's and Celery's start-up banners are not)."""
    with log.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode("utf-8", errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def host_port(url: str) -> str:
    return urlsplit(url).netloc


@pytest.fixture(scope="module")
def front_log(stack: Any) -> Path:
    return Path(stack.log_dir) / "obs-bento.log"


@pytest.fixture(scope="module")
def front(stack: Any, front_log: Path) -> Iterator[str]:
    """Our own front on the stack's backends: several processes, JSON logs, own metrics."""
    home = isolated_bentoml_home(Path(stack.env["BENTOML_HOME"]), stack.log_dir / "obs-home")
    env = {
        **stack.env,
        "BENTOML_HOME": str(home),
        "VQ_FRONT_WORKERS": "2",
        "VQ_CLASSIFIER_WORKERS": "2",
        # one classifier call per image: many connections, which the kernel spreads over
        # both classifier processes (merged calls reuse a few, maybe all to one process)
        "VQ_CALLS_IN_FLIGHT": "0",
        "VQ_TORCH_THREADS": "1",
        "VQ_LOG_JSON": "true",
    }
    with bento_server(env, front_log) as url:
        yield url


def served_by(log: Path, offset: int, service: str, path: str) -> set[str]:
    """Return the BentoML components (``service:name:worker``) that logged a ``path`` request."""
    return {
        str(r.get("component"))
        for r in json_records(log, offset)
        if f"path={path}," in r["message"] and service in str(r.get("component"))
    }


def test_metrics_aggregate_across_processes(front: str, front_log: Path) -> None:
    """Every process's observations reach /metrics (BentoML once kept only the last one's)."""
    before = Scrape.of(f"{front}/metrics")
    offset = front_log.stat().st_size
    payloads = small_jpegs(8, seed=10)
    sent = 0
    for _ in range(10):  # the kernel picks the process; retry until each took some
        responses = predict_many(front, payloads)
        assert [r.status_code for r in responses] == [200] * len(payloads)
        sent += len(payloads)
        after = Scrape.of(f"{front}/metrics")
        fronts = served_by(front_log, offset, "entry_service:visionqueue", "/predict")
        batchers = {
            worker
            for worker in after.label_values(
                "bentoml_service_adaptive_batch_size_count", "worker_index"
            )
            if after.total("bentoml_service_adaptive_batch_size_count", worker_index=worker)
            > before.total("bentoml_service_adaptive_batch_size_count", worker_index=worker)
        }
        if len(fronts) == 2 and len(batchers) == 2:
            break
    else:
        pytest.fail(f"requests never reached both processes: fronts={fronts} batchers={batchers}")

    def delta(name: str, **labels: str) -> float:
        return after.total(name, **labels) - before.total(name, **labels)

    predict = {"service_name": "visionqueue", "endpoint": "/predict"}
    assert delta("vq_batch_queue_wait_seconds_count") == sent
    assert delta("bentoml_service_request_duration_seconds_count", **predict) == sent
    assert delta("bentoml_service_request_total", **predict, http_response_code="200") == sent
    assert delta("bentoml_service_request_duration_seconds_count", endpoint="/classify") == sent
    assert delta("vq_images_classified_total") == sent
    assert delta("vq_inference_batch_images_sum") == sent
    assert delta("vq_inference_batch_images_count") == delta("vq_inference_batch_seconds_count")
    batches = delta("vq_inference_batch_seconds_count")
    assert 1 <= batches <= sent
    # the priority queue hands BentoML's dispatcher one pass at a time: one call per batch
    assert batches == delta("bentoml_service_adaptive_batch_size_count")
    assert batches == delta("bentoml_service_adaptive_batch_size_sum")


@dataclass(frozen=True)
class Workload:
    front: Scrape
    front_before: Scrape
    worker: Scrape
    worker_log: Path
    good_ids: list[str]
    bad_id: str
    outcomes: dict[str, int]
    request_id: str
    predict_statuses: list[int]
    final_statuses: dict[str, str]  # job id -> status, the failed job's and the good ones'


def post_job(url: str, data: bytes, webhook_url: str) -> str:
    """Submit a job; raise (a set-up error, not a finding) unless it is accepted."""
    resp = httpx.post(
        f"{url}/classify",
        files={"image": ("j.jpg", data, "image/jpeg")},
        data={"webhook_url": webhook_url},
        timeout=30,
    )
    resp.raise_for_status()
    return str(resp.json()["task_id"])


@pytest.fixture(scope="module")
def workload(stack: Any, front: str) -> Workload:
    """Sync predictions, a failed and M completed jobs with webhooks; then scrape both ends.

    It records what happened and asserts nothing: ``test_the_workload_ran_as_planned`` does.
    """
    with (
        metrics_worker(
            stack, VQ_WORKER_CLASSIFIER_URL=front, VQ_LOG_JSON="true", **WORKER_SECRETS
        ) as worker,
        WebhookReceiver() as receiver,
        database(stack.database_url) as engine,
    ):
        before = Scrape.of(f"{front}/metrics")
        responses = predict_many(front, small_jpegs(N_SYNC, seed=100))
        request_id = responses[0].headers.get("x-bentoml-request-id", "")

        receiver.respond(410)  # the failed job's webhook: a permanent failure, no retry
        bad_id = post_job(front, images.truncated_jpeg(), receiver.url())
        rows = wait_all_final(engine, [bad_id], 60)
        receiver.wait_for_requests(1, timeout_s=15)

        good_ids = [post_job(front, d, receiver.url()) for d in small_jpegs(M_JOBS, seed=200)]
        rows |= wait_all_final(engine, good_ids, 60)
        receiver.wait_for_requests(1 + M_JOBS, timeout_s=15)

        def deliveries_counted() -> Scrape | None:
            scrape = Scrape.of(worker.metrics_url)
            done = scrape.total("webhook_success_total") + scrape.total("webhook_failure_total")
            return scrape if done >= 1 + M_JOBS else None

        worker_scrape = wait_until(deliveries_counted, 15, "webhook attempts counted")
        return Workload(
            front=Scrape.of(f"{front}/metrics"),
            front_before=before,
            worker=worker_scrape,
            worker_log=worker.log,
            good_ids=good_ids,
            bad_id=bad_id,
            outcomes=dict(worker_outcomes(worker.log)),
            request_id=request_id,
            predict_statuses=[r.status_code for r in responses],
            final_statuses={job_id: row.status for job_id, row in rows.items()},
        )


def test_the_workload_ran_as_planned(workload: Workload) -> None:
    assert workload.predict_statuses == [200] * N_SYNC
    assert workload.request_id, "/predict answered without X-BentoML-Request-ID"
    assert workload.final_statuses == {
        workload.bad_id: "failed",
        **dict.fromkeys(workload.good_ids, "completed"),
    }


def test_every_dashboard_metric_is_live(workload: Workload) -> None:
    wanted: set[str] = set()
    for expr in dashboard_exprs():
        wanted |= promql_metric_names(expr)
    live = workload.front.names() | workload.worker.names()
    missing = wanted - set(SYNTHETIC) - live
    assert not missing, f"the dashboard queries series nothing exports: {sorted(missing)}"


def test_metric_values_match_the_workload(stack: Any, workload: Workload) -> None:
    front, worker = workload.front, workload.worker
    images_done = front.total("vq_images_classified_total")
    assert images_done - workload.front_before.total("vq_images_classified_total") >= (
        N_SYNC + M_JOBS
    )
    completed = workload.outcomes.get("completed", 0)
    failed = workload.outcomes.get("failed", 0)
    assert completed >= M_JOBS and failed >= 1, workload.outcomes
    assert worker.total("image_task_success_total") == completed
    assert worker.total("image_task_latency_seconds_count") == completed
    assert worker.total("image_task_failure_total", code="invalid_image") >= 1
    assert worker.total("image_task_failure_total") == failed
    assert worker.total("webhook_success_total") >= M_JOBS
    assert worker.total("webhook_failure_total", error="http_410") >= 1
    assert worker.total("webhook_latency_seconds_count") == worker.total(
        "webhook_success_total"
    ) + worker.total("webhook_failure_total")

    prefix = stack.env["VQ_BROKER_QUEUE_PREFIX"]
    assert front.label_values("celery_queue_depth", "queue") == {
        f"{prefix}visionqueue",
        f"{prefix}webhooks",
        f"{prefix}maintenance",
    }
    assert front.total("vq_jobs", status="completed") >= M_JOBS
    assert front.total("vq_jobs", status="failed") >= 1
    predict = {"service_name": "visionqueue", "endpoint": "/predict"}
    predicted = front.total("bentoml_service_request_total", **predict)
    # the person's requests only: job crops go to the classifier's crop socket (or the
    # front's POST /v1/batches/crops), never to /predict
    assert predicted - workload.front_before.total("bentoml_service_request_total", **predict) >= (
        N_SYNC
    )


def test_the_front_counts_the_webhook_attempts_of_every_worker(
    front: str, workload: Workload
) -> None:
    """The seed's webhook names on the service's own /metrics, from the delivery log."""
    before = workload.front_before
    worker = workload.worker

    def grown(scrape: Scrape, name: str, **labels: str) -> float:
        return scrape.total(name, **labels) - before.total(name, **labels)

    def caught_up() -> Scrape | None:
        # the worker counts an attempt just before its delivery-log row commits, and the
        # front reads the totals at most once per VQ_HEALTH_CACHE_S
        scrape = Scrape.of(f"{front}/metrics")
        done = grown(scrape, "webhook_success_total") + grown(scrape, "webhook_failure_total")
        return scrape if done >= 1 + M_JOBS else None

    scrape = wait_until(caught_up, 30, "the front's webhook totals")
    # this module's only worker made every attempt since `before`: the same counts
    assert grown(scrape, "webhook_success_total") == worker.total("webhook_success_total")
    assert grown(scrape, "webhook_failure_total", error="http_410") == worker.total(
        "webhook_failure_total", error="http_410"
    )
    assert grown(scrape, "webhook_latency_seconds_count") == grown(
        scrape, "webhook_success_total"
    ) + grown(scrape, "webhook_failure_total")
    assert scrape.total("webhook_latency_seconds_sum") > 0


def test_worker_logs_are_json_lines_with_job_ids(workload: Workload) -> None:
    records = json_records(workload.worker_log)
    assert records, "the worker wrote no JSON log line"
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    tagged = {r["job_id"] for r in records if "job_id" in r}
    assert set(workload.good_ids) | {workload.bad_id} <= tagged
    delivered = [r for r in records if "webhook attempt 1 delivered" in r["message"]]
    assert {r["job_id"] for r in delivered} == set(workload.good_ids)
    failed = [r for r in records if r["message"].endswith("failed: invalid_image")]
    assert workload.bad_id in {r.get("job_id") for r in failed}
    assert all(r["job_id"] in r["message"] for r in failed + delivered)


def test_front_logs_carry_the_request_id(workload: Workload, front_log: Path) -> None:
    """A client's X-BentoML-Request-ID finds the front's log line of that request."""
    records = [r for r in json_records(front_log) if r.get("request_id") == workload.request_id]
    assert any("path=/predict," in r["message"] for r in records), workload.request_id
    assert all(r["component"].startswith("entry_service:visionqueue") for r in records)


def test_no_secret_in_any_log(stack: Any, workload: Workload, front_log: Path) -> None:
    secrets = [stack.env[k] for k in SECRET_ENV if stack.env.get(k)] + list(WORKER_SECRETS.values())
    for log in (workload.worker_log, front_log):
        text = log.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{secret[:4]}... appears in {log.name}"


def test_prometheus_scrapes_front_and_worker(stack: Any, front: str, tmp_path: Path) -> None:
    binary = require_binary("prometheus", "Debian: apt-get install -y prometheus")
    with metrics_worker(stack, VQ_WORKER_CLASSIFIER_URL=front) as worker:
        targets = {"api": host_port(front), "worker": host_port(worker.metrics_url)}
        config = prometheus_config(targets)
        with prometheus_server(binary, config, tmp_path / "prometheus") as prom:

            def both_up() -> list[dict[str, Any]] | None:
                up = prometheus_query(prom, "up == 1")
                return up if {r["metric"]["job"] for r in up} == set(targets) else None

            wait_until(both_up, 30, "both targets scraped", interval=0.5)
            baseline = scalar(prometheus_query(prom, "sum(vq_images_classified_total)")) or 0.0

            assert [r.status_code for r in predict_many(front, small_jpegs(N_SYNC, seed=300))] == [
                200
            ] * N_SYNC
            with database(stack.database_url) as engine:
                ids = [post_job(front, d, "") for d in small_jpegs(M_JOBS, seed=400)]
                rows = wait_all_final(engine, ids, 60)
            assert {row.status for row in rows.values()} == {"completed"}
            completed = worker_outcomes(worker.log)["completed"]
            assert completed >= M_JOBS

            def caught_up() -> tuple[float, float] | None:
                images_done = scalar(prometheus_query(prom, "sum(vq_images_classified_total)"))
                succeeded = scalar(prometheus_query(prom, "sum(image_task_success_total)"))
                if images_done is None or succeeded is None:
                    return None
                if images_done >= baseline + N_SYNC + M_JOBS and succeeded == completed:
                    return images_done, succeeded
                return None

            wait_until(caught_up, 30, "Prometheus sees the work", interval=0.5)

            # every dashboard query is valid PromQL against real data
            empty = [
                expr
                for expr in dashboard_exprs()
                if not prometheus_query(prom, grafana_to_promql(expr))
            ]
            assert scalar(prometheus_query(prom, 'sum(up{job="worker"})')) == 1
            ratio = next(e for e in dashboard_exprs() if "image_task_failure_total[$__range]" in e)
            # no failure yet on this worker: the success ratio must still be 1, not "No data"
            assert scalar(prometheus_query(prom, grafana_to_promql(ratio))) == 1.0
            # the worker primes its failure counters at zero: every query has data
            assert not empty, empty


def test_flower_sees_the_embedded_broker_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`make run`'s worker and Flower on the filesystem broker; Flower behind basic auth."""
    from visionqueue.core.settings import Settings
    from visionqueue.launcher import children, flower_host, prepare_storage

    monkeypatch.setenv("VQ_HOST", "0.0.0.0")
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "a:b")
    assert flower_host(Settings()) == "0.0.0.0"  # behind auth Flower follows VQ_HOST
    monkeypatch.delenv("FLOWER_BASIC_AUTH")
    assert flower_host(Settings()) == "127.0.0.1"  # without, loopback only
    monkeypatch.delenv("VQ_HOST")

    flower_port = free_port()
    env = {
        "VQ_DATA_DIR": str(tmp_path / "data"),
        "VQ_FLOWER_PORT": str(flower_port),
        "VQ_WORKER_METRICS_PORT": "0",
        "VQ_WORKER_CONCURRENCY": "2",
        "VQ_BROKER_QUEUE_PREFIX": f"obs{uuid.uuid4().hex[:6]}-",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    prepare_storage(settings)
    procs = {child.name: child for child in children(settings)}
    assert "--address=127.0.0.1" in procs["flower"].args
    auth = ("obs", "flower-pw-3b9c1e")
    child_env = {**os.environ, "FLOWER_BASIC_AUTH": ":".join(auth)}
    running = [
        spawn(procs[name].args, child_env, tmp_path / f"{name}.log")
        for name in ("worker", "flower")
    ]
    flower = f"http://127.0.0.1:{flower_port}"
    try:

        def workers_seen() -> dict[str, Any] | None:
            try:
                resp = httpx.get(
                    f"{flower}/api/workers", params={"refresh": 1}, auth=auth, timeout=5
                )
            except httpx.HTTPError:
                return None
            body = resp.json() if resp.status_code == 200 else {}
            return body or None

        seen = wait_until(workers_seen, 60, "Flower lists the worker", interval=0.5)
        assert any(name.startswith("celery@") for name in seen), seen
        assert httpx.get(f"{flower}/api/workers", timeout=5).status_code == 401
        assert httpx.get(f"{flower}/", timeout=5).status_code == 401
        metrics = httpx.get(f"{flower}/metrics", timeout=5)  # Prometheus scrapes without auth
        assert metrics.status_code == 200
        assert re.search(r"^flower_", metrics.text, re.MULTILINE)
    finally:
        for proc in running:
            stop(proc)
