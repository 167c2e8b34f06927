"""The ``visionqueue`` command against a real server and worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import images

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "visionqueue.cli"]


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_classify_prints_the_same_top1_as_predict(stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    img = tmp_path / "coffee.png"
    img.write_bytes(images.skimage_photo("coffee.png"))
    direct = httpx.post(
        f"{stack.url}/predict", files={"image": ("coffee.png", img.read_bytes())}, timeout=30
    ).json()
    top1 = direct["predictions"][0]["class"]

    table = run("classify", str(img), "--url", stack.url)
    assert table.returncode == 0, table.stderr
    assert top1 in table.stdout.splitlines()[1]
    assert "demo model" in table.stdout

    machine = run("classify", str(img), "--url", stack.url, "--json")
    assert json.loads(machine.stdout)[0]["predictions"][0]["class"] == top1


def test_submit_wait_completes_a_directory(stack, worker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for i in range(20):
        (tmp_path / f"img{i:02}.jpg").write_bytes(images.jpeg(96, 80, seed=i))
    result = run("submit", str(tmp_path), "--wait", "--url", stack.url, "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    jobs = json.loads(result.stdout)
    assert len(jobs) == 20
    assert {j["status"] for j in jobs} == {"completed"}


def test_a_bad_image_makes_submit_exit_nonzero(stack, worker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "good.jpg").write_bytes(images.jpeg(64, 64))
    (tmp_path / "broken.jpg").write_bytes(images.truncated_jpeg())
    result = run("submit", str(tmp_path), "--wait", "--url", stack.url)
    assert result.returncode == 1
    assert "broken.jpg: FAILED invalid_image" in result.stdout
    assert "1 failed" in result.stdout


def test_unacceptable_file_is_reported_readably(stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image at all")
    result = run("classify", str(bad), "--url", stack.url)
    assert result.returncode == 1
    assert "unsupported_media_type" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "argv",
    [("jobs", "--url", "http://127.0.0.1:9"), ("--url", "http://127.0.0.1:9", "jobs")],
    ids=["options-after", "options-before"],
)
def test_unreachable_server_is_one_readable_line(argv: tuple[str, ...]) -> None:
    result = run(*argv)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "visionqueue: cannot reach http://127.0.0.1:9 (is `make run` running?)"
    )
