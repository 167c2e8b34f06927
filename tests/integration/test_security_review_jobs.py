"""Issue 25, item 2 through the job path: an elongated PNG fails its job once, with a code."""

from __future__ import annotations

import httpx
import pytest

from tests.support import images
from tests.support.waiting import wait_for_job

pytestmark = pytest.mark.integration


def test_an_elongated_png_fails_its_job_once_and_the_worker_goes_on(stack, worker) -> None:  # type: ignore[no-untyped-def]
    tall = images.png(1, 1500)  # 92 bytes of pixels; 256x384000 once resized
    resp = httpx.post(f"{stack.url}/v1/jobs", files={"images": ("t.png", tall)}, timeout=30)
    assert resp.status_code == 202, resp.text  # acceptance reads only the header
    job_id = resp.json()["jobs"][0]["id"]
    final = wait_for_job(stack.url, job_id)
    assert final["status"] == "failed", final
    assert final["error"]["code"] == "image_too_elongated", final
    assert "16777216" in final["error"]["message"]
    assert final["attempts"] == 1
    assert worker.poll() is None  # the worker survived it
    after = httpx.post(
        f"{stack.url}/v1/jobs", files={"images": ("ok.png", images.png(64, 48))}, timeout=30
    )
    assert wait_for_job(stack.url, after.json()["jobs"][0]["id"])["status"] == "completed"
