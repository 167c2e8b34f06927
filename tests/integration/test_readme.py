"""The README's examples work as written against a live server (curl and Python)."""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.webhook_receiver import WebhookReceiver
from tests.support import images
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parents[2] / "README.md"
DOC_URL = "http://127.0.0.1:3000"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def curl_commands() -> list[str]:
    commands = []
    for block in blocks("bash"):
        joined = block.replace("\\\n", " ")
        commands += [
            line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")
        ]
    return commands


@pytest.fixture
def photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "cat.jpg").write_bytes(images.jpeg(320, 240, seed=1))
    (tmp_path / "dog.jpg").write_bytes(images.jpeg(320, 240, seed=2))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_has_the_examples_this_test_runs() -> None:
    commands = curl_commands()
    assert any("/predict" in c for c in commands)
    assert any("/classify" in c for c in commands)
    assert any("/task-status/" in c for c in commands)
    assert any("SyncHTTPClient" in b for b in blocks("python"))
    assert any("/predictions/" in c for c in commands)
    assert any("/api/upload-image" in c for c in commands)
    assert any("/api/task-status/" in c for c in commands)
    assert any("/v1/batches" in c for c in commands)
    assert any("tritonclient" in b for b in blocks("python"))
    assert any("/metrics | grep image_task_success_total" in c for c in commands)


def put_catalogue(stack: Any, photos: Path) -> None:
    """The bucket prefix the README's batch example classifies: two photos."""
    import io

    from tests.support.stack import Stored

    s3 = Stored(stack).s3
    if not s3.bucket_exists("catalogue"):
        s3.make_bucket("catalogue")
    for name in ("cat.jpg", "dog.jpg"):
        data = (photos / name).read_bytes()
        s3.put_object("catalogue", f"photos/{name}", io.BytesIO(data), len(data))


def test_curl_examples(stack, worker, photos: Path) -> None:  # type: ignore[no-untyped-def]
    put_catalogue(stack, photos)
    with WebhookReceiver() as receiver:
        task_ids: dict[str, str] = {}
        for command in curl_commands():
            command = command.replace(DOC_URL, stack.url)
            command = command.replace("https://example.com/hook", receiver.url())
            if "| grep " in command:  # the monitoring example: a pipeline, run by a shell
                out = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
                assert out.returncode == 0, (command, out.stdout, out.stderr)
                assert re.search(r"^image_task_success_total \d", out.stdout, flags=re.M)
                continue
            if "/task-status/" in command:
                # /task-status/ is the seed API, /api/task-status/ the original's code
                which = "legacy" if "/api/task-status/" in command else "seed"
                assert which in task_ids, "the README submits a job before asking its status"
                command = re.sub(r"/task-status/\S+", f"/task-status/{task_ids[which]}", command)
                body = wait_until(
                    functools.partial(finished, command), 60, f"the README's {which} job ended"
                )
                if which == "legacy":
                    assert body["state"] == "SUCCESS", body
                    assert {"predictions", "processing_time"} <= set(body["result"])
                else:
                    assert body["status"] == "completed", body
                    assert set(body) == {"task_id", "status", "result", "error"}
                continue
            out = subprocess.run(
                [*shlex.split(command), "--fail-with-body"], capture_output=True, text=True
            )
            assert out.returncode == 0, (command, out.stdout, out.stderr)
            body = json.loads(out.stdout)
            if "/classify" in command:
                assert body["message"] == "Image classification task submitted successfully"
                task_ids["seed"] = body["task_id"]
            elif "/api/upload-image" in command:
                task_ids["legacy"] = body["task_id"]
            elif "/v1/batches" in command:
                assert body["status"] == "pending" and body["id"], body
            elif "/predictions/" in command:
                assert len(body) == 5 and all(isinstance(p, float) for p in body.values())
            elif "/predict" in command:
                assert len(body["predictions"]) == 3
        received = receiver.wait_for_requests(len(task_ids), timeout_s=30)
        assert len(received) == len(task_ids), "the README's webhook examples were not delivered"
        assert {json.loads(r.body)["data"]["task_id"] for r in received} == set(task_ids.values())


def finished(command: str) -> dict[str, Any] | None:
    """Run a status command; return its body once the job ended (either API's words)."""
    out = subprocess.run(shlex.split(command), capture_output=True, text=True, check=True)
    body = dict(json.loads(out.stdout))
    ended = body.get("status") in ("completed", "failed") or body.get("state") in (
        "SUCCESS",
        "FAILURE",
    )
    return body if ended else None


def test_python_examples(stack, worker, photos: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    ran = 0
    for block in blocks("python"):
        if "def handle(" in block:
            continue  # the receiver-side snippet; tests/integration/test_webhooks_e2e.py covers it
        code = block.replace(DOC_URL, stack.url)
        code = code.replace(DOC_URL.removeprefix("http://"), stack.url.removeprefix("http://"))
        exec(compile(code, "README.md", "exec"), {})
        ran += 1
    assert ran >= 2
    out = capsys.readouterr().out
    assert "predictions" in out
    assert out.count("completed") >= 2  # the v1 example prints each finished job
    assert httpx.get(f"{stack.url}/readyz", timeout=10).status_code == 200


def test_readme_cli_commands_run_as_written() -> None:
    """The README's path to the command works after `make run`, and its examples parse."""
    from visionqueue.cli import build_parser

    commands = [
        line.split("#")[0].strip()
        for block in blocks("bash")
        for line in block.splitlines()
        if line.startswith(".venv/bin/visionqueue ")
    ]
    assert len(commands) >= 3, commands
    done = subprocess.run(
        [str(README.parent / ".venv" / "bin" / "visionqueue"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "classify" in done.stdout and "--api-key" in done.stdout
    for command in commands:
        build_parser().parse_args(shlex.split(command)[1:])  # SystemExit(2) on a wrong line
