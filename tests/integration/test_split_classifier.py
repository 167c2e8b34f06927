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

from tests.integration.jobs_factories import database, job_rows, wait_all_final
from tests.support import images
from tests.support.servers import bento_server, free_port
from tests.support.stack import Stack, production_stack

pytestmark = pytest.mark.integration

BATCH = 4


@pytest.fixture(scope="module")
def split(server_env: dict[str, str], session_dir: Path) -> Iterator[Stack]:
    log_dir = session_dir / "split"
    log_dir.mkdir(parents=True, exist_ok=True)
    with bento_server(server_env, log_dir / "classifier.log", service="service:Classifier") as clf:
        env = {**server_env, "VQ_CLASSIFIER_URL": clf}
        with production_stack(env, log_dir) as stack:
            yield stack


def top5(answer: dict[str, Any]) -> list[tuple[int, str, float]]:
    # batch size changes the float kernels a little (test_predict_answers): 4 decimals
    return [(p["index"], p["class"], round(p["confidence"], 4)) for p in answer["predictions"]]


def test_jobs_classified_directly_answer_as_predict_does(split: Stack) -> None:
    photos = [images.skimage_photo(name) for name in ("chelsea.png", "coffee.png", "rocket.jpg")]
    payloads = [*photos, images.truncated_jpeg()]
    sync = [
        httpx.post(f"{split.url}/predict", files={"image": ("x", data)}, timeout=60)
        for data in photos
    ]
    assert [r.status_code for r in sync] == [200, 200, 200], sync[0].text
    files = [("images", (f"img{i}", data)) for i, data in enumerate(payloads)]
    resp = httpx.post(f"{split.url}/v1/jobs", files=files, timeout=60)
    assert resp.status_code == 202, resp.text
    ids = [job["id"] for job in resp.json()["jobs"]]
    nowhere = f"http://127.0.0.1:{free_port()}"  # a worker that called /predict would retry
    env = {
        "VQ_WORKER_CLASSIFIER_URL": nowhere,
        "VQ_WORKER_BATCH_SIZE": str(BATCH),
        "VQ_WORKER_BATCH_WAIT_MS": "1000",  # the four leave together: one classifier call
    }
    name = f"direct-{uuid.uuid4().hex[:6]}"
    with (
        split.worker(concurrency=BATCH, name=name, env=env),
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
        body = answer.json()
        assert top5(job.result) == top5(body)
        assert job.result["model"] == body["model"]
        assert job.result["preprocessing"] == body["preprocessing"] == "exact"
        assert job.model_tag == body["model"]["tag"]


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
