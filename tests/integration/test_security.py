"""API keys and per-key job isolation, back-pressure, and expiring image links on live servers."""

from __future__ import annotations

import base64
import dataclasses
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from persistence.local_images import image_signature
from tests.integration.jobs_factories import small_jpegs
from tests.support import images
from tests.support.servers import bento_server
from tests.support.stack import migrate
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # two Bento servers of its own

PROTECTED = [
    ("POST", "/predict"),
    ("POST", "/classify"),
    ("GET", "/task-status/00000000-0000-0000-0000-000000000000"),
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000"),
    ("DELETE", "/v1/jobs/00000000-0000-0000-0000-000000000000"),
    ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000/deliveries"),
    ("POST", "/v1/jobs/00000000-0000-0000-0000-000000000000/deliveries/redeliver"),
]


class Keyed(NamedTuple):
    url: str
    key_a: str
    key_b: str
    logs: list[Path]


@pytest.fixture(scope="module")
def keyed(stack: Any) -> Iterator[Keyed]:
    """A front with two API keys (on the stack's backends, queues of its own) and a worker."""
    key_a, key_b = (f"vq-key-{n}-{uuid.uuid4().hex}" for n in "ab")
    env = {
        **stack.env,
        "VQ_API_KEYS": f"{key_a},{key_b}",
        "VQ_BROKER_QUEUE_PREFIX": f"k{uuid.uuid4().hex[:8]}-",
    }
    env.pop("VQ_WORKER_CLASSIFIER_URL", None)
    log = stack.log_dir / "bento-keyed.log"
    with bento_server(env, log) as url:
        # the worker classifies through the keyed front, so it must send a key itself
        workers = dataclasses.replace(
            stack, url=url, env={**env, "VQ_WORKER_CLASSIFIER_URL": url}, workers=[]
        )
        name = f"keyed-{uuid.uuid4().hex[:6]}"
        workers.start_worker(concurrency=4, name=name)
        try:
            yield Keyed(url, key_a, key_b, [log, stack.log_dir / f"worker-{name}.log"])
        finally:
            workers.stop_workers()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def call(url: str, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    kwargs: dict[str, Any] = {"headers": headers, "timeout": 30}
    if method == "POST" and path in ("/predict", "/classify", "/v1/jobs"):
        field = "images" if path == "/v1/jobs" else "image"
        kwargs["files"] = {field: ("a.jpg", images.jpeg(64, 64, seed=5), "image/jpeg")}
    return httpx.request(method, f"{url}{path}", **kwargs)


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
def test_protected_routes_refuse_a_missing_or_wrong_key(
    keyed: Keyed, method: str, path: str
) -> None:
    attempts = {
        "missing": {},
        "wrong": bearer("vq-wrong-" + keyed.key_a[-12:]),
        "basic-scheme": {"Authorization": f"Basic {keyed.key_a}"},
        "empty-bearer": {"Authorization": "Bearer"},
        "key-prefix": bearer(keyed.key_a[:-1]),
    }
    for label, headers in attempts.items():
        resp = call(keyed.url, method, path, headers)
        assert resp.status_code == 401, (label, resp.text)
        assert resp.json()["error"]["code"] == "unauthorized", label
        assert resp.headers["www-authenticate"] == "Bearer", label
        assert keyed.key_a not in resp.text and keyed.key_b not in resp.text


def test_health_and_metrics_stay_open(keyed: Keyed) -> None:
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{keyed.url}{path}", timeout=30).status_code == 200, path


def test_a_job_is_visible_only_to_the_key_that_submitted_it(keyed: Keyed) -> None:
    a, b = bearer(keyed.key_a), bearer(keyed.key_b)
    data = small_jpegs(1, seed=900)[0]
    resp = httpx.post(
        f"{keyed.url}/classify",
        files={"image": ("a.jpg", data, "image/jpeg")},
        data={"webhook_url": "http://127.0.0.1:9/hook"},  # nothing listens: a failed delivery
        headers=a,
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["task_id"]

    def finished() -> dict[str, Any] | None:
        body = httpx.get(f"{keyed.url}/v1/jobs/{job_id}", headers=a, timeout=30).json()
        return body if body["status"] in ("completed", "failed") else None

    job = wait_until(finished, 60, "the job to finish")
    assert job["status"] == "completed", job  # the worker authenticated to /predict
    assert httpx.get(job["image"]["url"], timeout=30).content == data
    wait_until(
        lambda: httpx.get(f"{keyed.url}/v1/jobs/{job_id}/deliveries", headers=a, timeout=30).json()[
            "deliveries"
        ],
        30,
        "a webhook delivery attempt",
    )

    for method, path in [
        ("GET", f"/task-status/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/deliveries"),
        ("POST", f"/v1/jobs/{job_id}/deliveries/redeliver"),
        ("DELETE", f"/v1/jobs/{job_id}"),
    ]:
        other = httpx.request(method, f"{keyed.url}{path}", headers=b, timeout=30)
        assert other.status_code == 404, (method, path, other.text)
        assert other.json()["error"]["code"] == "not_found"
        assert job["image"]["url"] not in other.text
    owner_cancel = httpx.delete(f"{keyed.url}/v1/jobs/{job_id}", headers=a, timeout=30)
    assert owner_cancel.status_code == 409  # the owner learns it is too late, not "unknown"

    listed_a = httpx.get(f"{keyed.url}/v1/jobs", headers=a, timeout=30).json()["jobs"]
    listed_b = httpx.get(f"{keyed.url}/v1/jobs", headers=b, timeout=30).json()["jobs"]
    assert job_id in {j["id"] for j in listed_a}
    assert job_id not in {j["id"] for j in listed_b}


def test_protocol_routes_need_a_key_and_refuse_in_their_own_shape(keyed: Keyed) -> None:
    name = httpx.get(f"{keyed.url}/readyz", timeout=30).json()["model"]["tag"].split(":")[0]
    photo = images.skimage_photo("coffee.png")
    infer = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": []}]}
    infer["inputs"][0]["data"] = [base64.b64encode(photo).decode()]
    refused = {
        "v2 infer": (httpx.post, f"/v2/models/{name}/infer", {"json": infer}, {"error"}),
        "v2 metadata": (httpx.get, f"/v2/models/{name}", {}, {"error"}),
        "torchserve": (
            httpx.put,
            f"/predictions/{name}",
            {"content": photo},
            {"code", "type", "message"},
        ),
        "upload": (httpx.post, "/api/upload-image", {"files": {"file": ("a", photo)}}, {"detail"}),
        "task state": (httpx.get, "/api/task-status/nope", {}, {"detail"}),
    }
    for label, (method, path, kwargs, shape) in refused.items():
        resp = method(f"{keyed.url}{path}", timeout=30, **kwargs)
        assert resp.status_code == 401, (label, resp.text)
        assert set(resp.json()) == shape, (label, resp.text)
        assert resp.headers["www-authenticate"] == "Bearer", label
        granted = method(f"{keyed.url}{path}", timeout=60, headers=bearer(keyed.key_a), **kwargs)
        assert granted.status_code in (200, 404), (label, granted.text)  # 404: no such task
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/ping", "/health"):
        assert httpx.get(f"{keyed.url}{path}", timeout=30).status_code == 200, path


def test_an_original_route_task_is_visible_only_to_its_key(keyed: Keyed) -> None:
    a, b = bearer(keyed.key_a), bearer(keyed.key_b)
    data = small_jpegs(1, seed=910)[0]
    resp = httpx.post(
        f"{keyed.url}/api/upload-image", files={"file": ("a.jpg", data)}, headers=a, timeout=30
    )
    assert resp.status_code == 200, resp.text
    task_id = resp.json()["task_id"]
    state = httpx.get(f"{keyed.url}/api/task-status/{task_id}", headers=a, timeout=30)
    assert state.status_code == 200 and state.json()["state"] in ("PENDING", "STARTED", "SUCCESS")
    other = httpx.get(f"{keyed.url}/api/task-status/{task_id}", headers=b, timeout=30)
    assert other.status_code == 404 and set(other.json()) == {"detail"}
    native = httpx.get(f"{keyed.url}/v1/jobs/{task_id}", headers=b, timeout=30)
    assert native.status_code == 404


def test_no_key_is_ever_logged(keyed: Keyed) -> None:
    wrong = "vq-wrong-" + uuid.uuid4().hex
    assert call(keyed.url, "GET", "/v1/jobs", bearer(wrong)).status_code == 401
    ok = call(keyed.url, "POST", "/predict", bearer(keyed.key_b))
    assert ok.status_code == 200, ok.text
    # Wait for the last request's access log line (span=<request id>) instead of a while: the
    # front is one process, so whatever the earlier requests logged is written before it.
    request_id = ok.headers["x-bentoml-request-id"]

    def logged() -> bool:
        return any(request_id in log.read_text(errors="replace") for log in keyed.logs)

    wait_until(logged, 30, f"the access log line of request {request_id}")
    for log in keyed.logs:
        text = log.read_text(errors="replace")
        assert text, f"{log} is empty"
        for secret in (keyed.key_a, keyed.key_b, wrong):
            assert secret not in text, f"an API key appears in {log.name}"


# --- back-pressure and expiring image links on the embedded default -------------------------


LINK_TTL_S = 600


class Embedded(NamedTuple):
    url: str
    job_ids: list[str]
    first_image: bytes
    signing_key: str


@pytest.fixture(scope="module")
def embedded(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Embedded]:
    """The embedded default (SQLite, local images, filesystem broker), no worker, 3 jobs waiting."""
    data_dir = tmp_path_factory.mktemp("embedded")
    signing_key = "test-signing-" + uuid.uuid4().hex
    env = {
        **server_env,
        "VQ_DATA_DIR": str(data_dir),
        "VQ_MAX_BACKLOG": "3",
        "VQ_IMAGE_URL_TTL_S": str(LINK_TTL_S),
        "VQ_SIGNING_KEY": signing_key,
    }
    migrate(env)
    with bento_server(env, data_dir / "bento.log") as url:
        payloads = small_jpegs(3, seed=950)
        ids = []
        for data in payloads:
            resp = httpx.post(f"{url}/classify", files={"image": ("a.jpg", data)}, timeout=30)
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["task_id"])
        yield Embedded(url, ids, payloads[0], signing_key)


def test_a_full_backlog_answers_429_with_retry_after(embedded: Embedded) -> None:
    extra = small_jpegs(2, seed=960)
    one = httpx.post(f"{embedded.url}/classify", files={"image": ("a.jpg", extra[0])}, timeout=30)
    batch = httpx.post(
        f"{embedded.url}/v1/jobs", files=[("images", ("b.jpg", d)) for d in extra], timeout=30
    )
    for resp in (one, batch):
        assert resp.status_code == 429, resp.text
        assert resp.json()["error"]["code"] == "backlog_full"
        assert int(resp.headers["retry-after"]) > 0
    legacy = httpx.post(
        f"{embedded.url}/api/upload-image", files={"file": ("c.jpg", extra[0])}, timeout=30
    )
    assert legacy.status_code == 429, legacy.text
    assert set(legacy.json()) == {"detail"} and int(legacy.headers["retry-after"]) > 0
    listed = httpx.get(f"{embedded.url}/v1/jobs", timeout=30).json()["jobs"]
    assert sorted(j["id"] for j in listed) == sorted(embedded.job_ids)


def test_a_signed_image_link_works_until_it_expires(embedded: Embedded) -> None:
    asked = time.time()
    job = httpx.get(f"{embedded.url}/v1/jobs/{embedded.job_ids[0]}", timeout=30).json()
    answered = time.time()
    link = job["image"]["url"]
    assert link.startswith(f"{embedded.url}/v1/images/")
    fetched = httpx.get(link, timeout=30)
    assert fetched.status_code == 200
    assert fetched.content == embedded.first_image
    assert fetched.headers["content-type"] == "image/jpeg"

    sig = parse_qs(urlsplit(link).query)["sig"][0]
    forged = link.replace(sig, ("0" if sig[0] != "0" else "1") + sig[1:])
    later = link.replace("expires=", "expires=9")  # a longer life needs a new signature
    for bad in (forged, later):
        resp = httpx.get(bad, timeout=30)
        assert resp.status_code == 404, bad
        assert resp.json()["error"]["code"] == "not_found"

    # the link lives VQ_IMAGE_URL_TTL_S from when it was made
    expires = int(parse_qs(urlsplit(link).query)["expires"][0])
    assert int(asked) + LINK_TTL_S <= expires <= int(answered) + LINK_TTL_S + 1
    # a link signed with the server's key whose time is up: the clock is forged, not waited on
    path = urlsplit(link).path
    past = int(time.time()) - 1
    sig = image_signature(path.removeprefix("/v1/images/"), past, embedded.signing_key.encode())
    expired = httpx.get(f"{embedded.url}{path}", params={"expires": past, "sig": sig}, timeout=30)
    assert expired.status_code == 404
    assert expired.json()["error"]["code"] == "not_found"
