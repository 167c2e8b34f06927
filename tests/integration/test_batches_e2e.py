"""Dataset batches end to end on the server stack: PostgreSQL, Redis, an S3 server holding
real photos, a real Bento server and real Celery workers (which classify whole chunks
through the front's crops route, as on the embedded default)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from minio import Minio
from sqlalchemy import update
from sqlalchemy.orm import Session

from jobs.celery_app import PURGE_TASK
from jobs.crash_points import BATCH_CHUNK_BEFORE_STORE
from persistence.models import Batch
from tests.integration.jobs_factories import database
from tests.integration.webhook_receiver import WebhookReceiver
from tests.support.images import jpeg, skimage_photo
from tests.support.stack import Stack, production_stack
from tests.support.waiting import wait_until
from visionqueue.core.secrets import generate_secret

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY_A, KEY_B = "batch-tenant-a-key", "batch-tenant-b-key"
SERVICE_TOKEN = "batch-workers-own-token"
SECRET = generate_secret()
PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "camera.png")


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batch-roots")


@pytest.fixture(scope="module")
def bstack(server_env: dict[str, str], session_dir: Path, roots: Path) -> Iterator[Stack]:
    extra = {
        "VQ_API_KEYS": f"{KEY_A},{KEY_B}",
        "VQ_BATCH_LOCAL_ROOTS": str(roots),
        "VQ_BATCH_CHUNK_SIZE": "4",
        "VQ_BATCH_LANES": "2",
        "VQ_BATCH_LEASE_S": "4",
        "VQ_WORKER_SWEEP_INTERVAL_S": "1",
        "VQ_WEBHOOK_SECRETS": SECRET,
        "VQ_SERVICE_TOKEN": SERVICE_TOKEN,
    }
    with production_stack(server_env, session_dir / "batches-stack", 13, **extra) as stack:
        yield stack


@pytest.fixture
def worker(bstack: Stack) -> Iterator[None]:
    bstack.start_worker(concurrency=4, beat=True)
    yield
    bstack.stop_workers()


def _client(stack: Stack, key: str = KEY_A) -> httpx.Client:
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _s3(stack: Stack) -> Minio:
    return Minio(
        stack.s3_endpoint.removeprefix("http://"),
        "vq-test-access",
        "vq-test-secret",
        secure=False,
        region="us-east-1",
    )


def _put(s3: Minio, bucket: str, key: str, data: bytes) -> None:
    if not s3.bucket_exists(bucket):
        s3.make_bucket(bucket)
    s3.put_object(bucket, key, io.BytesIO(data), len(data))


def _wait_final(client: httpx.Client, batch_id: str, timeout: float = 240) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        view = client.get(f"/v1/batches/{batch_id}").json()
        return view if view["status"] in ("completed", "failed", "cancelled") else None

    return wait_until(final, timeout, f"batch {batch_id} final", interval=0.5)


def _lines(client: httpx.Client, batch_id: str) -> list[dict[str, Any]]:
    resp = client.get(f"/v1/batches/{batch_id}/results")
    assert resp.status_code == 200
    return [json.loads(line) for line in resp.text.splitlines()]


def test_prefix_batch_answers_like_predict_with_error_lines_parts_webhook_and_tenants(
    bstack: Stack, worker: None
) -> None:
    run = uuid.uuid4().hex[:8]
    s3 = _s3(bstack)
    images = {f"photos/{name}": skimage_photo(name) for name in PHOTOS}
    images.update({f"photos/noise-{i}.jpg": jpeg(320, 240, seed=i) for i in range(4)})
    for key, data in images.items():
        _put(s3, "datasets", f"{run}/{key}", data)
    _put(s3, "datasets", f"{run}/photos/broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    _put(s3, "datasets", f"{run}/photos/notes.txt", b"hello")
    with WebhookReceiver(SECRET) as hooks, _client(bstack) as client:
        resp = client.post(
            "/v1/batches",
            json={
                "source": f"s3://datasets/{run}/",
                "top_k": 3,
                "metadata": {"run": run},
                "webhook_url": hooks.url(),
            },
        )
        assert resp.status_code == 202, resp.text
        batch_id = resp.json()["id"]
        assert resp.json()["status"] == "pending"
        view = _wait_final(client, batch_id)
        assert view["status"] == "completed"
        assert (view["total"], view["done"], view["failed"]) == (11, 9, 2)
        lines = _lines(client, batch_id)

        # one line per object, keyed relative to the source
        keys = [line["key"] for line in lines]
        assert sorted(keys) == sorted([*images, "photos/broken.jpg", "photos/notes.txt"])
        by_key = {line["key"]: line for line in lines}
        # what /predict answers for the same bytes: a corrupt JPEG, a file that is no image
        for bad, code in (
            ("photos/broken.jpg", "invalid_image"),
            ("photos/notes.txt", "unsupported_media_type"),
        ):
            assert by_key[bad]["predictions"] is None
            assert by_key[bad]["error"]["code"] == code, by_key[bad]
        # each answer is /predict's answer for the same image (distinct, or a swap hides)
        answers = {}
        for key, data in images.items():
            predicted = client.post("/predict", files={"image": ("x", data)}, data={"top_k": 3})
            assert predicted.status_code == 200
            answers[key] = predicted.json()["predictions"]
        assert len({json.dumps(a) for a in answers.values()}) == len(answers)
        for key, expected in answers.items():
            got = by_key[key]["predictions"]
            assert [p["index"] for p in got] == [p["index"] for p in expected], key
            for g, e in zip(got, expected, strict=True):
                assert g["confidence"] == pytest.approx(e["confidence"], abs=1e-5)
            assert by_key[key]["model"]["weights"] == "random-init:seed=0"
            assert by_key[key]["error"] is None

        # the part files in the project's store hold exactly the same lines
        parts = sorted(
            o.object_name
            for o in s3.list_objects("vq-images", prefix=f"batches/{batch_id}/", recursive=True)
        )
        assert parts == [f"batches/{batch_id}/part-0000{i}.jsonl" for i in range(3)]
        in_parts = []
        for part in parts:
            in_parts += s3.get_object("vq-images", part).read().decode().splitlines()
        assert [json.loads(x) for x in in_parts] == lines

        # one signed event when the batch ended
        (event,) = hooks.wait_for_requests(1, timeout_s=30)
        assert event.verified, event.verify_error
        body = json.loads(event.body)
        assert body["type"] == "batch.completed"
        assert body["data"]["id"] == batch_id and body["data"]["done"] == 9

    # another tenant sees nothing of it
    with _client(bstack, KEY_B) as other:
        assert other.get(f"/v1/batches/{batch_id}").status_code == 404
        assert other.get(f"/v1/batches/{batch_id}/results").status_code == 404
        assert other.delete(f"/v1/batches/{batch_id}").status_code == 404
        assert batch_id not in {b["id"] for b in other.get("/v1/batches").json()["batches"]}
    with _client(bstack) as client:
        assert batch_id in {b["id"] for b in client.get("/v1/batches").json()["batches"]}


def test_manifest_naming_a_missing_key_gets_its_error_line(bstack: Stack, worker: None) -> None:
    run = uuid.uuid4().hex[:8]
    s3 = _s3(bstack)
    keys = [f"{run}/m/{i}.jpg" for i in range(3)]
    for i, key in enumerate(keys):
        _put(s3, "datasets", key, jpeg(200, 150, seed=50 + i))
    manifest = "\n".join(json.dumps({"key": k}) for k in [*keys, f"{run}/m/gone.jpg"])
    _put(s3, "datasets", f"{run}/list.jsonl", manifest.encode())
    with _client(bstack) as client:
        resp = client.post("/v1/batches", json={"source": f"s3://datasets/{run}/list.jsonl"})
        assert resp.status_code == 202, resp.text
        view = _wait_final(client, resp.json()["id"])
        assert (view["status"], view["done"], view["failed"]) == ("completed", 3, 1)
        lines = {line["key"]: line for line in _lines(client, view["id"])}
        assert set(lines) == {*keys, f"{run}/m/gone.jpg"}
        assert lines[f"{run}/m/gone.jpg"]["error"]["code"] == "object_missing"


def test_bad_sources_are_refused_at_submission(bstack: Stack, roots: Path) -> None:
    (roots / "empty").mkdir(exist_ok=True)
    cases = {
        "s3://no-such-bucket-here/x/": (404, "source_not_found"),
        f"file://{roots}/absent/": (404, "source_not_found"),
        f"file://{roots}/empty/": (422, "source_empty"),
        "file:///etc/": (422, "source_not_allowed"),
        "http://example.invalid/x/": (422, "invalid_source"),
    }
    with _client(bstack) as client:
        for source, (status, code) in cases.items():
            resp = client.post("/v1/batches", json={"source": source})
            assert resp.status_code == status, (source, resp.text)
            assert resp.json()["error"]["code"] == code, source
        resp = client.post("/v1/batches", json={"source": f"file://{roots}/", "top_k": 99})
        assert resp.status_code == 422
        assert client.get(f"/v1/batches/{uuid.uuid4()}").status_code == 404


def _folder(roots: Path, count: int) -> tuple[Path, list[str]]:
    folder = roots / uuid.uuid4().hex[:8]
    names = [f"img-{i:03d}.jpg" for i in range(count)]
    folder.mkdir()
    for i, name in enumerate(names):
        (folder / name).write_bytes(jpeg(160, 120, seed=100 + i))
    return folder, names


def test_a_worker_sigkilled_mid_chunk_leaves_every_key_exactly_once(
    bstack: Stack, roots: Path
) -> None:
    folder, names = _folder(roots, 24)
    doomed = bstack.start_worker(
        concurrency=2, name="doomed", env={"VQTEST_CRASH_AT": BATCH_CHUNK_BEFORE_STORE}
    )
    try:
        with _client(bstack) as client:
            resp = client.post("/v1/batches", json={"source": f"file://{folder}/"})
            assert resp.status_code == 202, resp.text
            batch_id = resp.json()["id"]
            wait_until(lambda: doomed.poll() is not None, 120, "the worker killed mid-chunk")
            assert client.get(f"/v1/batches/{batch_id}").json()["done"] == 0
            bstack.start_worker(concurrency=4, beat=True, name="rescuer")
            view = _wait_final(client, batch_id)
            assert (view["status"], view["done"], view["total"]) == ("completed", 24, 24)
            keys = [line["key"] for line in _lines(client, batch_id)]
            assert sorted(keys) == names  # each once: none lost, none twice
    finally:
        bstack.stop_workers()


def test_cancel_mid_run_stops_new_chunks(bstack: Stack, roots: Path) -> None:
    folder, names = _folder(roots, 80)
    bstack.start_worker(concurrency=2, name="slow")
    try:
        with _client(bstack) as client:
            batch_id = client.post("/v1/batches", json={"source": f"file://{folder}/"}).json()["id"]
            wait_until(
                lambda: client.get(f"/v1/batches/{batch_id}").json()["done"] > 0, 120, "progress"
            )
            resp = client.delete(f"/v1/batches/{batch_id}")
            assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
            time.sleep(3)  # chunks in flight may still store their lines, none starts
            settled = client.get(f"/v1/batches/{batch_id}").json()
            time.sleep(3)
            later = client.get(f"/v1/batches/{batch_id}").json()
            assert later["status"] == "cancelled"
            assert later["done"] == settled["done"] < 80
            keys = [line["key"] for line in _lines(client, batch_id)]
            assert len(keys) == len(set(keys)) == later["done"]
            assert set(keys) <= set(names)
    finally:
        bstack.stop_workers()


def test_cli_batch_waits_and_prints_where_the_results_are(
    bstack: Stack, roots: Path, worker: None
) -> None:
    folder, names = _folder(roots, 6)
    from tests.support.servers import ROOT

    done = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "-m", "visionqueue.cli", "batch", f"file://{folder}/",
         "--wait", "--url", bstack.url, "--api-key", KEY_A, "--top-k", "2"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "6 done, 0 failed" in done.stdout
    results = done.stdout.split("results: ")[1].split()[0]
    with _client(bstack) as client:
        lines = [json.loads(x) for x in client.get(results).text.splitlines()]
    assert sorted(line["key"] for line in lines) == names
    assert {len(line["predictions"]) for line in lines} == {2}
    assert "done" in done.stderr  # the progress bar


def test_the_batch_webhook_log_and_redelivery_through_the_api(
    bstack: Stack, roots: Path, worker: None
) -> None:
    folder, _ = _folder(roots, 3)
    with _client(bstack) as client:
        # signed with the tenant's own secret too (VQ_WEBHOOK_TENANT_SECRETS=both)
        (own_secret,) = client.get("/v1/webhook-secret").json()["secrets"]
        with WebhookReceiver(own_secret) as hooks:
            hooks.respond(500, body=b"not yet")  # the first attempt fails, the retry lands
            resp = client.post(
                "/v1/batches", json={"source": f"file://{folder}/", "webhook_url": hooks.url()}
            )
            assert resp.status_code == 202, resp.text
            batch_id = resp.json()["id"]
            assert _wait_final(client, batch_id)["status"] == "completed"

            # the schedule's first retry: 5 s +-20%
            log = wait_until(lambda: _log_of(client, batch_id, 2), 60, "the retry delivered")
            assert log["event"]["status"] == "delivered"
            first, second = log["deliveries"]
            assert (first["attempt"], first["status_code"], first["error"]) == (1, 500, "http_500")
            assert first["succeeded"] is False and first["next_attempt_at"] is not None
            assert (second["attempt"], second["status_code"], second["succeeded"]) == (2, 200, True)
            assert first["latency_ms"] > 0 and second["latency_ms"] > 0
            event_id = log["event"]["id"]
            assert {first["event_id"], second["event_id"]} == {event_id}
            assert log["event"]["type"] == "batch.completed"

            resp = client.post(f"/v1/batches/{batch_id}/deliveries/redeliver")
            assert resp.status_code == 202, resp.text
            assert resp.json() == {"status": "scheduled", "attempt": 3}
            again = client.post(f"/v1/batches/{batch_id}/deliveries/redeliver")
            assert again.status_code == 429
            assert again.json()["error"]["code"] == "redeliver_rate_limited"
            assert int(again.headers["retry-after"]) >= 1
            requests = hooks.wait_for_requests(3, timeout_s=30)
            assert len(requests) == 3
            assert all(r.verified for r in requests), [r.verify_error for r in requests]
            assert {r.headers["webhook-id"] for r in requests} == {event_id}
            log = wait_until(lambda: _log_of(client, batch_id, 3), 30, "the redelivery logged")
            assert log["deliveries"][2]["attempt"] == 3 and log["deliveries"][2]["succeeded"]

        silent = client.post("/v1/batches", json={"source": f"file://{folder}/"}).json()["id"]
        refused = client.post(f"/v1/batches/{silent}/deliveries/redeliver")
        assert refused.status_code == 409, refused.text
        assert client.get(f"/v1/batches/{silent}/deliveries").json() == {
            "deliveries": [],
            "event": None,
        }
    with _client(bstack, KEY_B) as other:  # another tenant: as absent as a missing batch
        assert other.get(f"/v1/batches/{batch_id}/deliveries").status_code == 404
        assert other.post(f"/v1/batches/{batch_id}/deliveries/redeliver").status_code == 404


def _log_of(client: httpx.Client, batch_id: str, attempts: int) -> dict[str, Any] | None:
    """The batch's delivery log once it holds ``attempts`` attempts."""
    log: dict[str, Any] = client.get(f"/v1/batches/{batch_id}/deliveries").json()
    return log if len(log["deliveries"]) >= attempts else None


def test_finished_batches_are_purged_with_their_own_part_files_only(bstack: Stack) -> None:
    run = uuid.uuid4().hex[:8]
    s3 = _s3(bstack)
    for i in range(3):
        _put(s3, "datasets", f"{run}/r/{i}.jpg", jpeg(200, 150, seed=300 + i))
    source = f"s3://datasets/{run}/r/"
    their_output = f"s3://datasets/{run}/out/"
    with (
        bstack.worker(concurrency=4, env={"VQ_BATCH_RETENTION_DAYS": "1"}),
        _client(bstack) as client,
    ):
        ids = {
            name: client.post("/v1/batches", json={"source": source, **extra}).json()["id"]
            for name, extra in (("ours", {}), ("theirs", {"output": their_output}), ("new", {}))
        }
        for batch_id in ids.values():
            assert _wait_final(client, batch_id)["status"] == "completed"

        def parts(bucket: str, prefix: str) -> list[str]:
            listed = s3.list_objects(bucket, prefix=prefix, recursive=True)
            return sorted(str(o.object_name) for o in listed)

        assert parts("vq-images", f"batches/{ids['ours']}/") == [
            f"batches/{ids['ours']}/part-00000.jsonl"
        ]
        assert parts("datasets", f"{run}/out/") == [f"{run}/out/part-00000.jsonl"]
        two_days_ago = datetime.now(UTC) - timedelta(days=2)
        with database(bstack.database_url) as engine, Session(engine) as session:
            session.execute(
                update(Batch)
                .where(Batch.id.in_([ids["ours"], ids["theirs"]]))
                .values(finished_at=two_days_ago)
            )
            session.commit()
        prefix = bstack.env["VQ_BROKER_QUEUE_PREFIX"]
        trigger = Celery("purge-trigger", broker=bstack.broker_url)
        trigger.conf.broker_transport_options = {"global_keyprefix": prefix}
        try:
            trigger.send_task(PURGE_TASK, queue=f"{prefix}maintenance")
        finally:
            trigger.close()
        wait_until(
            lambda: all(
                client.get(f"/v1/batches/{ids[name]}").status_code == 404
                for name in ("ours", "theirs")
            ),
            60,
            "the purge of the batches finished two days ago",
        )
        assert parts("vq-images", f"batches/{ids['ours']}/") == []  # ours: deleted
        assert parts("datasets", f"{run}/out/") == [f"{run}/out/part-00000.jsonl"]  # theirs
        assert client.get(f"/v1/batches/{ids['new']}").json()["status"] == "completed"
        assert len(_lines(client, ids["new"])) == 3
        assert parts("vq-images", f"batches/{ids['new']}/") == [
            f"batches/{ids['new']}/part-00000.jsonl"
        ]


@pytest.mark.parametrize(
    "credential",
    [
        # the workers' own token and no tenant's key (the crops route and /v1/models open to it)
        {"VQ_API_KEYS": ""},
        # no token: the first tenant's key, as before VQ_SERVICE_TOKEN
        {"VQ_SERVICE_TOKEN": ""},
    ],
    ids=["service-token", "first-api-key"],
)
def test_workers_run_chunks_with_their_own_credential(
    bstack: Stack, roots: Path, credential: dict[str, str]
) -> None:
    folder, names = _folder(roots, 5)
    with bstack.worker(concurrency=2, env=credential), _client(bstack) as client:
        batch_id = client.post("/v1/batches", json={"source": f"file://{folder}/"}).json()["id"]
        view = _wait_final(client, batch_id, timeout=120)
        assert (view["status"], view["done"], view["failed"]) == ("completed", 5, 0)
        lines = _lines(client, batch_id)
        assert sorted(line["key"] for line in lines) == names
        assert all(line["predictions"] for line in lines)
    service = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    with httpx.Client(base_url=bstack.url, headers=service, timeout=30) as svc:
        # the token opens the workers' calls only: no tenant's batch, list or submission
        assert svc.get(f"/v1/batches/{batch_id}").status_code == 401
        assert svc.get("/v1/batches").status_code == 401
        assert svc.post("/v1/batches", json={"source": f"file://{folder}/"}).status_code == 401
        assert svc.get("/v1/models").status_code == 200


def test_the_list_follows_next_cursor_and_refuses_a_forged_one(bstack: Stack, roots: Path) -> None:
    folder, _ = _folder(roots, 1)
    with _client(bstack) as client:
        made = []
        for _ in range(3):
            batch_id = client.post("/v1/batches", json={"source": f"file://{folder}/"}).json()["id"]
            made.append(batch_id)
            assert client.delete(f"/v1/batches/{batch_id}").status_code == 200  # no work left
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            body = client.get("/v1/batches", params=params).json()
            assert len(body["batches"]) <= 2
            seen += [b["id"] for b in body["batches"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen[:3] == made[::-1]  # newest first, then every older batch once
        assert len(seen) == len(set(seen))
        with _client(bstack, KEY_B) as other:
            assert not set(made) & {b["id"] for b in other.get("/v1/batches").json()["batches"]}
        resp = client.get("/v1/batches", params={"cursor": "not-a-cursor"})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_request"
