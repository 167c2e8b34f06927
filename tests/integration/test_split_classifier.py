"""The classifier on its own: front, classifier and worker as three processes over loopback TCP.

With ``VQ_CLASSIFIER_URL`` the front calls the classifier served by ``bentoml serve
service:Classifier``, and workers decode, crop and classify a batch of jobs themselves in one
call to it: no job goes through the front's ``/predict``. The worker here is pointed at a
port nobody listens on for ``VQ_WORKER_CLASSIFIER_URL``, so a job that tried the front could
not complete.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from model_store.importer import import_classifier
from tests.integration.jobs_factories import (
    database,
    job_rows,
    retries_planned,
    small_jpegs,
    status_counts,
    wait_all_final,
    worker_outcomes,
)
from tests.support import checkpoints, images
from tests.support.servers import BentoServer, bento_server, free_port
from tests.support.stack import Stack, production_stack
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

BATCH = 4
# two models of our own besides the default: other labels and, for shapes, another crop size
# and interpolation (ResNets: a random-init MobileNet answers every photo alike)
OWN_LABELS = {"split-pets": checkpoints.PETS, "split-shapes": checkpoints.SHAPES}
TOKEN = "split-classifier-token"


@pytest.fixture(scope="module")
def own_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Import the two models into the test store; return each one's exact tag by name."""
    folder = tmp_path_factory.mktemp("split-models")
    weights, labels, _ = checkpoints.resnet18_pets(folder)
    pets = import_classifier("split-pets", weights, labels=labels)
    weights, labels, _ = checkpoints.torchscript_shapes(folder)
    overrides = checkpoints.onnx_overrides()  # 160 px crops, bicubic, other mean and std
    shapes = import_classifier("split-shapes", weights, labels=labels, overrides=overrides)
    return {"split-pets": pets.tag, "split-shapes": shapes.tag}


@pytest.fixture(scope="module")
def split_env(server_env: dict[str, str], own_models: dict[str, str]) -> dict[str, str]:
    """What the classifier, the front and the workers share: the served models, default first,
    and the classifier's token (so every test here also shows that the front and the workers
    send it)."""
    models = ",".join([server_env["VQ_MODEL_TAG"], *own_models.values()])
    return {**server_env, "VQ_MODELS": models, "VQ_CLASSIFIER_TOKEN": TOKEN}


@pytest.fixture(scope="module")
def classifier(split_env: dict[str, str], session_dir: Path) -> Iterator[BentoServer]:
    """``bentoml serve service:Classifier`` on its own (a test may kill and restart it)."""
    log_dir = session_dir / "split"
    log_dir.mkdir(parents=True, exist_ok=True)
    server = BentoServer(split_env, log_dir / "classifier.log", service="service:Classifier")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def split(split_env: dict[str, str], classifier: BentoServer, session_dir: Path) -> Iterator[Stack]:
    env = {**split_env, "VQ_CLASSIFIER_URL": classifier.url}
    with production_stack(env, session_dir / "split") as stack:
        yield stack


def top5(answer: dict[str, Any]) -> list[tuple[int, str, float]]:
    # batch size changes the float kernels a little (test_predict_answers): 4 decimals
    return [(p["index"], p["class"], round(p["confidence"], 4)) for p in answer["predictions"]]


def predict(url: str, data: bytes, model: str = "") -> dict[str, Any]:
    """The front's ``/predict`` answer to one image with ``model`` (the default if empty)."""
    form = {"model": model} if model else {}
    resp = httpx.post(f"{url}/predict", files={"image": ("x", data)}, data=form, timeout=60)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def submit(url: str, payloads: list[bytes], model: str = "") -> list[str]:
    """Submit the images as one ``/v1/jobs`` request for ``model``; return the job ids."""
    files = [("images", (f"img{i}", data)) for i, data in enumerate(payloads)]
    form = {"model": model} if model else {}
    resp = httpx.post(f"{url}/v1/jobs", files=files, data=form, timeout=60)
    assert resp.status_code == 202, resp.text
    return [job["id"] for job in resp.json()["jobs"]]


def direct_worker_env(batch: int) -> dict[str, str]:
    """A worker on the direct path whose jobs leave in batches of ``batch``.

    Its front URL is a port nobody listens on: a job that tried ``/predict`` would retry.
    """
    return {
        "VQ_WORKER_CLASSIFIER_URL": f"http://127.0.0.1:{free_port()}",
        "VQ_WORKER_BATCH_SIZE": str(batch),
        "VQ_WORKER_BATCH_WAIT_MS": "1000",  # jobs queued together leave together: one call
    }


def test_jobs_classified_directly_answer_as_predict_does(split: Stack) -> None:
    photos = [images.skimage_photo(name) for name in ("chelsea.png", "coffee.png", "rocket.jpg")]
    sync = [predict(split.url, data) for data in photos]
    ids = submit(split.url, [*photos, images.truncated_jpeg()])
    name = f"direct-{uuid.uuid4().hex[:6]}"
    with (
        split.worker(concurrency=BATCH, name=name, env=direct_worker_env(BATCH)),
        database(split.database_url) as engine,
    ):
        wait_all_final(engine, ids, timeout=120)
        final = job_rows(engine, ids)
    *good, corrupt = ids
    assert final[corrupt].status == "failed"
    assert final[corrupt].error_code == "invalid_image"
    assert final[corrupt].attempts == 1
    for job_id, answer in zip(good, sync, strict=True):
        job = final[job_id]
        assert job.status == "completed", (job.status, job.error_code)
        assert job.attempts == 1
        assert job.result is not None
        assert top5(job.result) == top5(answer)
        assert job.result["model"] == answer["model"]
        assert job.result["preprocessing"] == answer["preprocessing"] == "exact"
        assert job.model_tag == answer["model"]["tag"]


def test_jobs_for_two_models_answer_as_predict_does_with_each(
    split: Stack, own_models: dict[str, str]
) -> None:
    """Jobs for two models leave in one worker batch; each is classified by its own model
    (its labels, its crop size, its version), as the front's ``/predict`` answers with it."""
    photos = [images.skimage_photo(name) for name in ("chelsea.png", "coffee.png", "rocket.jpg")]
    sync = {model: [predict(split.url, data, model) for data in photos] for model in own_models}
    for model, answers in sync.items():
        assert {a["model"]["tag"] for a in answers} == {own_models[model]}
        # no two photos share an answer, or a swap between two jobs could not show
        assert len({tuple(top5(a)) for a in answers}) == len(photos), answers
    ids = {model: submit(split.url, photos, model) for model in own_models}
    every = [job_id for model_ids in ids.values() for job_id in model_ids]
    name = f"models-{uuid.uuid4().hex[:6]}"
    with (
        split.worker(concurrency=len(every), name=name, env=direct_worker_env(len(every))),
        database(split.database_url) as engine,
    ):
        final = wait_all_final(engine, every, timeout=120)
    for model, answers in sync.items():
        for job_id, answer in zip(ids[model], answers, strict=True):
            job = final[job_id]
            assert job.status == "completed", (model, job.status, job.error_code)
            assert job.attempts == 1
            assert job.result is not None
            assert top5(job.result) == top5(answer)
            assert {p["class"] for p in job.result["predictions"]} <= set(OWN_LABELS[model])
            assert job.result["model"] == answer["model"]
            assert job.result["model"]["name"] == model
            assert job.model_tag == own_models[model]


def test_the_classifier_answers_only_callers_with_its_token(
    split: Stack, classifier: BentoServer
) -> None:
    """With ``VQ_CLASSIFIER_TOKEN``, a call without it (or with another) is a 401 in the error
    envelope; the probes stay open; a worker without it retries its job (the deployment is at
    fault, not the job), then fails it saying so."""
    for route, body in (("model_info", {"name": ""}), ("packed_classify", {"crops": []})):
        for headers in ({}, {"Authorization": "Bearer not-the-token"}):
            resp = httpx.post(f"{classifier.url}/{route}", json=body, headers=headers, timeout=30)
            assert resp.status_code == 401, (route, headers, resp.text)
            assert resp.headers["www-authenticate"] == "Bearer"
            error = resp.json()["error"]
            assert error["code"] == "unauthorized"
            assert error["message"] == (
                "a valid classifier token is required (Authorization: Bearer TOKEN)"
            )
    good = {"Authorization": f"Bearer {TOKEN}"}
    resp = httpx.post(f"{classifier.url}/model_info", json={"name": ""}, headers=good, timeout=30)
    assert resp.status_code == 200 and resp.json()["tag"] == split.env["VQ_MODEL_TAG"]
    assert httpx.get(f"{classifier.url}/readyz", timeout=30).status_code == 200
    ids = submit(split.url, [images.jpeg(64, 64)])
    env = {**direct_worker_env(1), "VQ_CLASSIFIER_TOKEN": "", "VQ_WORKER_MAX_RETRIES": "1"}
    with (
        split.worker(concurrency=1, name=f"no-token-{uuid.uuid4().hex[:6]}", env=env),
        database(split.database_url) as engine,
    ):
        job = wait_all_final(engine, ids, timeout=120)[ids[0]]
    assert (job.status, job.error_code, job.attempts) == ("failed", "classifier_http_401", 2)
    assert job.error_message is not None and job.error_message.startswith("gave up after retries")


def test_a_front_whose_classifier_went_away_answers_503(
    server_env: dict[str, str], session_dir: Path
) -> None:
    log_dir = session_dir / "split-gone"
    log_dir.mkdir(parents=True, exist_ok=True)
    image = {"image": ("x", images.jpeg(64, 64))}
    with contextlib.ExitStack() as classifier:
        clf = classifier.enter_context(
            bento_server(server_env, log_dir / "classifier.log", service="service:Classifier")
        )
        env = {**server_env, "VQ_CLASSIFIER_URL": clf}
        with bento_server(env, log_dir / "front.log") as url:
            assert httpx.post(f"{url}/predict", files=image, timeout=60).status_code == 200
            classifier.close()  # the classifier process stops; the front keeps running
            resp = httpx.post(f"{url}/predict", files=image, timeout=60)
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "service_unavailable"


@pytest.mark.slow
def test_jobs_survive_the_classifier_killed_and_started_again(
    split: Stack, classifier: BentoServer
) -> None:
    """The classifier SIGKILLed with a batch in flight, jobs submitted while it is down, then
    started again on its port: every job completes, and none twice."""
    env = {
        **direct_worker_env(BATCH),
        # the outage lasts as long as a classifier start on a loaded machine: no retry budget
        # (>= 151 s of backoff by default) may turn a slow start into failed jobs here
        "VQ_WORKER_MAX_RETRIES": "1000",
        "VQ_WORKER_MAX_ATTEMPTS": "1000",
    }
    name = f"outage-{uuid.uuid4().hex[:6]}"
    log = split.log_dir / f"worker-{name}.log"
    with (
        split.worker(concurrency=BATCH, name=name, env=env),
        database(split.database_url) as engine,
    ):
        before = submit(split.url, small_jpegs(BATCH, seed=7100))
        done_before = wait_all_final(engine, before, timeout=120)
        assert {row.status for row in done_before.values()} == {"completed"}
        classifier.pause()  # the next batch's call hangs: it is in flight when the process dies
        in_flight = submit(split.url, small_jpegs(2 * BATCH, seed=7200))
        wait_until(
            lambda: status_counts(engine, in_flight)["processing"] > 0,
            60,
            "a batch in flight on the paused classifier",
        )
        classifier.kill()
        late = small_jpegs(BATCH, seed=7300)
        during = submit(split.url, late)
        hit = set(in_flight) | set(during)
        # every job met the outage: its call failed and a retry (with backoff) was planned
        wait_until(
            lambda: hit <= retries_planned(log, "classifier_unavailable"),
            120,
            "a retry planned for every job of the outage",
        )
        assert status_counts(engine, list(hit))["completed"] == 0
        classifier.start()  # on the same port, which the front and the worker still call
        # a job retries within its current backoff: at most 90 s (60 s cap, jitter 1.5)
        rows = wait_all_final(engine, [*before, *hit], timeout=240)
        completions = worker_outcomes(log)["completed"]
    assert {row.status for row in rows.values()} == {"completed"}
    assert completions == len(rows)  # classify_job completed each job once, none twice
    for job_id in before:
        assert rows[job_id].attempts == 1
        assert rows[job_id].finished_at == done_before[job_id].finished_at
    for job_id in hit:
        assert rows[job_id].attempts >= 2, job_id
    # the front calls the classifier on the same port again, and answers as the jobs did
    for job_id, data in zip(during, late, strict=True):
        result = rows[job_id].result
        assert result is not None and top5(result) == top5(predict(split.url, data))


@pytest.mark.slow
def test_a_batch_shared_by_a_direct_and_a_front_worker_answers_as_predict_does(
    split: Stack, own_models: dict[str, str]
) -> None:
    """A dataset batch for the 160 px model, taken by two workers at once: one on the direct
    path (its front URL is dead), one posting crops through the front. Each object's line is
    ``/predict``'s answer with that model, and both workers took chunks."""
    import io
    import json

    from minio import Minio
    from sqlalchemy import select

    from persistence.models import BatchChunk

    run = uuid.uuid4().hex[:8]
    photos = [images.skimage_photo(n) for n in ("chelsea.png", "coffee.png", "rocket.jpg")]
    photos += small_jpegs(21, seed=300)
    s3 = Minio(split.s3_endpoint.removeprefix("http://"), "vq-test-access", "vq-test-secret",
               secure=False, region="us-east-1")  # fmt: skip
    if not s3.bucket_exists("split-data"):
        s3.make_bucket("split-data")
    for i, data in enumerate(photos):
        s3.put_object("split-data", f"{run}/{i:03d}.jpg", io.BytesIO(data), len(data))
    sync = {
        f"{i:03d}.jpg": predict(split.url, data, "split-shapes") for i, data in enumerate(photos)
    }
    batch_env = {"VQ_BATCH_CHUNK_SIZE": "2", "VQ_BATCH_LANES": "4"}
    with (
        split.worker(concurrency=4, name=f"bd-{run}", env={**direct_worker_env(1), **batch_env}),
        split.worker(concurrency=4, name=f"bf-{run}", env={"VQ_CLASSIFIER_URL": "", **batch_env}),
        httpx.Client(base_url=split.url, timeout=60) as client,
    ):
        resp = client.post(
            "/v1/batches", json={"source": f"s3://split-data/{run}/", "model": "split-shapes"}
        )
        assert resp.status_code == 202, resp.text
        batch_id = resp.json()["id"]

        def final() -> dict[str, Any] | None:
            view = client.get(f"/v1/batches/{batch_id}").json()
            return view if view["status"] == "completed" else None

        view = wait_until(final, 240, "batch completed")
        lines = [
            json.loads(x) for x in client.get(f"/v1/batches/{batch_id}/results").text.splitlines()
        ]
    assert (view["done"], view["failed"]) == (len(photos), 0)
    assert sorted(line["key"] for line in lines) == sorted(sync)
    for line in lines:
        answer = sync[line["key"]]
        assert top5(line) == top5(answer), line["key"]
        assert line["model"] == answer["model"]
    with database(split.database_url) as engine, engine.connect() as conn:
        holders = set(
            conn.scalars(select(BatchChunk.leased_by).where(BatchChunk.batch_id == batch_id))
        )
    assert len(holders) == 2, holders  # both workers took chunks of the one batch
