"""``make run`` with no backends configured: one command serves jobs, Ctrl-C stops it all."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from persistence.local_images import image_signature
from tests.integration.jobs_factories import small_jpegs
from tests.support.launcher import BANNER, launcher_env, start_launcher
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # each test starts the whole stack


def test_embedded_default_serves_jobs_and_stops_on_ctrl_c(
    tmp_path: Path, stored_model: Any
) -> None:
    env = launcher_env(tmp_path / "data")
    with start_launcher(env, tmp_path / "launcher.log") as launched:
        launched.wait_for_output(BANNER)
        serve_five_jobs(launched.url, tmp_path / "data")
        children = launched.children()
        names = " ".join(" ".join(p.cmdline()[:3]) for p in children)
        assert "bentoml" in names and "celery" in names, names
        stopped_s = launched.interrupt_and_wait()
        launched.wait_all_gone()
        assert "stopped" in launched.output()
    print(f"launcher stopped {len(children)} processes in {stopped_s:.1f}s")


def test_ctrl_c_during_start_up_stops_everything(tmp_path: Path, stored_model: Any) -> None:
    env = launcher_env(tmp_path / "data")
    with start_launcher(env, tmp_path / "launcher.log") as launched:
        launched.wait_for_output("starting the Celery worker")
        time.sleep(1)  # Bento and the worker are starting, nothing is ready yet
        assert launched.children()
        launched.interrupt_and_wait()
        launched.wait_all_gone()
        assert BANNER not in launched.output()


def serve_five_jobs(url: str, data_dir: Path) -> None:
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    payloads = small_jpegs(5, seed=900)
    task_ids = []
    for i, data in enumerate(payloads):
        resp = httpx.post(f"{url}/classify", files={"image": (f"{i}.jpg", data)}, timeout=30)
        assert resp.status_code == 202, resp.text
        task_ids.append(resp.json()["task_id"])

    def finished(task_id: str) -> dict[str, Any] | None:
        body = httpx.get(f"{url}/task-status/{task_id}", timeout=10).json()
        return body if body["status"] in ("completed", "failed") else None

    finals = [wait_until(functools.partial(finished, t), 90, f"job {t}") for t in task_ids]
    assert [f["status"] for f in finals] == ["completed"] * 5, finals

    # the image URL is a signed link to this same service, not to any other server
    for data, final in zip(payloads, finals, strict=True):
        image_url = final["result"]["image_url"]
        assert image_url.startswith(f"{url}/v1/images/")
        got = httpx.get(image_url, timeout=10)
        assert got.status_code == 200
        assert got.content == data
        assert got.headers["content-type"] == "image/jpeg"
    parts = urlsplit(finals[0]["result"]["image_url"])
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    key = parts.path.removeprefix("/v1/images/")
    tampered_sig = ("0" if query["sig"][0] != "0" else "1") + query["sig"][1:]
    past = int(time.time()) - 10
    # no built-in key: the launcher generated this data dir's own (VQ_SIGNING_KEY unset)
    signing_key = (data_dir / "signing-key").read_bytes().strip()
    assert signing_key != b"dev-insecure-signing-key"
    expired_sig = image_signature(key, past, signing_key)
    for params in (
        {"expires": query["expires"], "sig": tampered_sig},
        {"expires": str(int(query["expires"]) + 1), "sig": query["sig"]},
        {"expires": str(past), "sig": expired_sig},
    ):
        resp = httpx.get(f"{url}{parts.path}", params=params, timeout=10)
        assert resp.status_code == 404, params
        assert resp.json()["error"]["code"] == "not_found"
