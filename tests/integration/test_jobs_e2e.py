"""Async jobs end to end on the production stack: seed route in, result row and object out."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.support import images
from tests.support.waiting import wait_for_job

pytestmark = pytest.mark.integration


def test_seed_route_round_trip(stack, worker) -> None:  # type: ignore[no-untyped-def]
    data = images.skimage_photo("coffee.png")
    resp = httpx.post(
        f"{stack.url}/classify",
        files={"image": ("coffee.png", data, "image/png")},
        data={"metadata": '{"source": "e2e"}'},
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    accepted = resp.json()
    assert accepted["status"] == "pending"
    assert accepted["message"] == "Image classification task submitted successfully"

    final = wait_for_job(stack.url, accepted["task_id"], route="/task-status/{id}")
    assert final["status"] == "completed", final
    assert final["error"] is None
    sync = httpx.post(
        f"{stack.url}/predict", files={"image": ("c.png", data)}, data={"top_k": "5"}, timeout=30
    ).json()
    got = [(p["class"], round(p["confidence"], 4)) for p in final["result"]["predictions"]]
    want = [(p["class"], round(p["confidence"], 4)) for p in sync["predictions"]]
    assert got == want
    assert final["result"]["model"]["weights"] == "random-init:seed=0"

    # the image URL is a presigned S3 GET: a plain GET returns the same bytes
    image_url = final["result"]["image_url"]
    assert image_url.startswith(stack.s3_endpoint)
    assert httpx.get(image_url, timeout=10).content == data

    # the row is committed in Postgres, with its result
    engine = create_engine(stack.database_url)
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, result, attempts, weights_origin FROM jobs WHERE id = :id"),
            {"id": accepted["task_id"]},
        ).one()
    engine.dispose()
    assert row.status == "completed"
    assert row.attempts == 1
    assert row.weights_origin == "random-init:seed=0"
    assert row.result["predictions"][0]["class"] == got[0][0]
    assert row.result["preprocessing"] == "exact"


def test_unknown_task_is_404(stack) -> None:  # type: ignore[no-untyped-def]
    resp = httpx.get(f"{stack.url}/task-status/00000000-0000-0000-0000-000000000000", timeout=10)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_corrupt_image_fails_once_with_a_clear_code(stack, worker) -> None:  # type: ignore[no-untyped-def]
    resp = httpx.post(
        f"{stack.url}/classify", files={"image": ("t.jpg", images.truncated_jpeg())}, timeout=30
    )
    assert resp.status_code == 202  # acceptance only reads the header
    final = wait_for_job(stack.url, resp.json()["task_id"], route="/task-status/{id}")
    assert final["status"] == "failed"
    assert final["error"]["code"] == "invalid_image"
    job = httpx.get(f"{stack.url}/v1/jobs/{resp.json()['task_id']}", timeout=10).json()
    assert job["attempts"] == 1


@pytest.mark.parametrize(
    ("files", "data", "status", "code"),
    [
        ({"image": ("a.txt", b"hello")}, {}, 415, "unsupported_media_type"),
        ({"image": ("a.png", images.png_header_bomb())}, {}, 422, "image_too_large"),
        ({"image": ("e.jpg", b"")}, {}, 400, "empty_image"),
        ({"image": ("a.jpg", images.jpeg(64, 64))}, {"metadata": "[1,2]"}, 422, "invalid_metadata"),
        (
            {"image": ("a.jpg", images.jpeg(64, 64))},
            {"webhook_url": "file:///etc/passwd"},
            422,
            "invalid_webhook_url",
        ),
        (
            {"image": ("a.jpg", images.jpeg(64, 64))},
            {"webhook_url": "http://10.0.0.1/hook"},
            422,
            "forbidden_webhook_url",
        ),
        ({}, {"metadata": "{}"}, 400, "missing_field"),
    ],
    ids=["text", "bomb", "empty", "metadata-list", "file-url", "private-url", "no-image"],
)
def test_bad_submissions_are_refused_and_nothing_is_stored(  # type: ignore[no-untyped-def]
    stack, files, data, status, code
) -> None:
    engine = create_engine(stack.database_url)
    with engine.connect() as conn:
        before = conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()
    resp = httpx.post(f"{stack.url}/classify", files=files or None, data=data, timeout=30)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == before
    engine.dispose()


def test_the_worker_never_imports_torch(stack, worker) -> None:  # type: ignore[no-untyped-def]
    """Workers classify through the front's /predict: torch stays out of their memory."""
    import psutil

    resp = httpx.post(
        f"{stack.url}/classify", files={"image": ("a.jpg", images.jpeg(96, 72, seed=5))}, timeout=30
    )
    assert resp.status_code == 202, resp.text
    final = wait_for_job(stack.url, resp.json()["task_id"], route="/task-status/{id}")
    assert final["status"] == "completed", final  # the worker ran a whole job

    root = psutil.Process(worker.pid)
    mapped = {m.path for proc in (root, *root.children(recursive=True)) for m in proc.memory_maps()}
    assert any("psycopg" in path for path in mapped)  # the maps do show its native imports
    assert [path for path in mapped if "/torch/" in path or "libtorch" in path] == []
