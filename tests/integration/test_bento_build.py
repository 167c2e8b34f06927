"""``bentoml build`` from bentofile.yaml, offline: the Bento names the model and the front."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.servers import BIN, ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # runs `bentoml build`

# Any attempt to reach a package index fails at once instead of hanging or passing by luck.
OFFLINE_ENV = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "",
    "no_proxy": "",
    "PIP_NO_INDEX": "1",
    "UV_OFFLINE": "1",
}
BUILD_TIMEOUT_S = 240


def built_bento(stdout: str) -> Path:
    match = re.search(r"__tag__:(\S+):(\S+)", stdout)
    assert match, stdout[-2000:]
    name, version = match.groups()
    return Path(os.environ["BENTOML_HOME"]) / "bentos" / name / version


def test_bentoml_build_offline(stored_model: Any) -> None:
    import bentoml

    try:
        importlib.metadata.version("uv")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            "uv is not installed: BentoML 1.4.40 runs uv in every `bentoml build` (even with "
            "lock_packages: false) and pip-installs it from the network when it is missing"
        )

    latest = str(bentoml.models.get("resnet18:latest").tag)  # what bentofile's models: resolves
    env = {**os.environ, **OFFLINE_ENV, "BENTOML_DO_NOT_TRACK": "true"}
    # the timeout only stops a hung build; being offline is checked on what it printed
    result = subprocess.run(
        [str(BIN / "bentoml"), "build", "--output", "tag"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # nothing was fetched or installed: the build never reached for an index
    fetched = re.findall(
        r"^.*(?:Downloading|Collecting|Retrying|Installing collected).*$", output, re.M
    )
    assert not fetched, fetched[:5]

    bento = built_bento(result.stdout)
    info = yaml.safe_load((bento / "bento.yaml").read_text(encoding="utf-8"))
    assert info["service"] == "service:VisionQueue"
    assert info["name"] == "visionqueue"
    assert [m["tag"] for m in info["models"]] == [latest]
    assert stored_model.tag.split(":")[0] == "resnet18"
    services = {s["name"]: s for s in info["services"]}
    assert services["visionqueue"]["dependencies"] == [{"service": "classifier"}]
    assert [m["tag"] for m in services["classifier"]["models"]] == [latest]
    envs = {e["name"]: str(e["value"]) for e in info["envs"]}
    assert envs["VQ_ENV"] == "production"
    assert envs["VQ_LOG_JSON"] == "true"

    src = bento / "src"
    for path in (
        "service.py",
        "visionqueue/core/logging_setup.py",
        "jobs/tasks.py",
        "visionqueue/api/ui/index.html",  # the web page at /
        "visionqueue/api/ui/app.js",
    ):
        assert (src / path).is_file(), path
    assert any((src / "persistence" / "migrations").rglob("*.py"))
    assert not (src / "tests").exists()
    assert not list(src.rglob("__pycache__"))
