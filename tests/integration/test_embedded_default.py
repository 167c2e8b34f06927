"""``make run`` with no backends configured: one command serves jobs, Ctrl-C stops it all."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psutil
import pytest

from persistence.local_images import image_signature
from tests.integration.jobs_factories import small_jpegs, wait_until
from tests.support.servers import ROOT, free_port

pytestmark = pytest.mark.integration
BANNER = "VisionQueue is up"


def started_by(data_dir: Path) -> list[psutil.Process]:
    """Return every live process started with ``VQ_DATA_DIR=data_dir`` (the launcher's tree)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("VQ_DATA_DIR") == str(
                data_dir
            ):
                found.append(proc)
    return found


class Launched:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, data_dir: Path, log: Path) -> None:
        self.proc, self.url, self.data_dir, self.log = proc, url, data_dir, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> list[psutil.Process]:
        return [p for p in started_by(self.data_dir) if p.pid != self.proc.pid]

    def interrupt_and_wait(self, timeout: float = 20) -> float:
        """Send Ctrl-C's SIGINT; return how long the launcher took to exit (code 0)."""
        os.killpg(self.proc.pid, signal.SIGINT)
        started = time.monotonic()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"launcher running {timeout}s after SIGINT:\n{self.output()[-3000:]}")
        assert code == 0, self.output()[-3000:]
        return time.monotonic() - started

    def kill_all(self) -> None:
        """SIGKILL whatever is left of the launcher's tree (only after a failure)."""
        for proc in [*started_by(self.data_dir)]:
            with contextlib.suppress(psutil.Error, OSError):
                os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


@contextlib.contextmanager
def start_launcher(tmp_path: Path) -> Iterator[Launched]:
    """Run ``python -m visionqueue.launcher`` on the embedded default in a fresh data dir."""
    port = free_port()
    data_dir = tmp_path / "data"
    env = {
        **os.environ,
        "VQ_PORT": str(port),
        "VQ_DATA_DIR": str(data_dir),
        "VQ_WEIGHTS": "random",
        "VQ_FLOWER_PORT": "0",
        "VQ_WORKER_METRICS_PORT": "0",
        "VQ_WORKER_CONCURRENCY": "4",
        "BENTOML_HOME": os.environ["BENTOML_HOME"],
    }
    log = tmp_path / "launcher.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "visionqueue.launcher"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    launched = Launched(proc, f"http://127.0.0.1:{port}", data_dir, log)
    try:
        yield launched
    finally:
        launched.kill_all()


def wait_for_output(launched: Launched, text: str, timeout: float = 240) -> None:
    def seen() -> bool:
        if launched.proc.poll() is not None:
            raise RuntimeError(f"launcher exited:\n{launched.output()[-4000:]}")
        return text in launched.output()

    wait_until(seen, timeout, repr(text), interval=0.2)


def assert_all_gone(launched: Launched) -> None:
    deadline = time.monotonic() + 5  # the launcher waited for its children; allow for reaping
    while launched.children() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not launched.children(), [p.cmdline() for p in launched.children()]


def test_embedded_default_serves_jobs_and_stops_on_ctrl_c(
    tmp_path: Path, stored_model: Any
) -> None:
    with start_launcher(tmp_path) as launched:
        wait_for_output(launched, BANNER)
        serve_five_jobs(launched.url)
        children = launched.children()
        names = " ".join(" ".join(p.cmdline()[:3]) for p in children)
        assert "bentoml" in names and "celery" in names, names
        stopped_s = launched.interrupt_and_wait()
        assert_all_gone(launched)
        assert "stopped" in launched.output()
    print(f"launcher stopped {len(children)} processes in {stopped_s:.1f}s")


def test_ctrl_c_during_start_up_stops_everything(tmp_path: Path, stored_model: Any) -> None:
    with start_launcher(tmp_path) as launched:
        wait_for_output(launched, "starting worker")
        time.sleep(1)  # Bento and the worker are starting, nothing is ready yet
        assert launched.children()
        launched.interrupt_and_wait()
        assert_all_gone(launched)
        assert BANNER not in launched.output()


def serve_five_jobs(url: str) -> None:
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
    expired_sig = image_signature(key, past, b"dev-insecure-signing-key")
    for params in (
        {"expires": query["expires"], "sig": tampered_sig},
        {"expires": str(int(query["expires"]) + 1), "sig": query["sig"]},
        {"expires": str(past), "sig": expired_sig},
    ):
        resp = httpx.get(f"{url}{parts.path}", params=params, timeout=10)
        assert resp.status_code == 404, params
        assert resp.json()["error"]["code"] == "not_found"
