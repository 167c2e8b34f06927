"""Start-up offline: ImageNet weights cannot be downloaded, so the import falls back, loudly.

The real loader runs (torchvision's download through urllib), pointed at a proxy on a
closed loopback port and an empty TORCH_HOME: nothing is mocked, nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import free_port

pytestmark = pytest.mark.integration


def import_offline(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    dead_proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens: every fetch is refused
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "TORCH_HOME": str(tmp_path / "torch"),  # no cached weights
        "HTTPS_PROXY": dead_proxy,
        "https_proxy": dead_proxy,
        "HTTP_PROXY": dead_proxy,
        "http_proxy": dead_proxy,
        "NO_PROXY": "",
        "no_proxy": "",
    }
    args = ["import", "resnet18-offline", "--weights", "imagenet1k_v1", "--seed", "3", "--json"]
    return subprocess.run(
        [sys.executable, "-m", "model_store", *args, *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_offline_start_up_falls_back_to_a_seeded_demo_model(tmp_path: Path) -> None:
    refused = import_offline(tmp_path)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "could not download torchvision's IMAGENET1K_V1 weights" in refused.stderr

    fallback = import_offline(tmp_path, "--fallback-random")
    assert fallback.returncode == 0, fallback.stderr[-3000:]
    stored = json.loads(fallback.stdout.strip().splitlines()[-1])
    assert stored["weights"] == "random-init:seed=3"
    assert stored["tag"].startswith("resnet18-offline:")
    assert (tmp_path / "bentoml" / "models" / "resnet18-offline").is_dir()
    assert not list((tmp_path / "torch").rglob("*.pth"))  # nothing was downloaded
