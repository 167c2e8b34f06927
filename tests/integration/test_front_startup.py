"""The front's production start-up: the worker's secrets check, and /metrics behind a token.

Real ``bentoml serve service:VisionQueue`` processes with ``VQ_ENV=production`` (what the Bento
image bakes in).
"""

from __future__ import annotations

import base64
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import images
from tests.support.servers import BIN, bento_server, free_port, spawn, stop
from tests.support.stack import migrate

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # Bento servers of its own


def _whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def test_production_refuses_to_start_without_secrets(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "bento.log"
    env = {
        **os.environ,
        **server_env,
        "VQ_DATA_DIR": str(tmp_path / "data"),
        "VQ_ENV": "production",
        "VQ_PORT": str(port),
    }
    proc = spawn(
        [str(BIN / "bentoml"), "serve", "service:VisionQueue", "--port", str(port)], env, log
    )
    try:
        returncode = proc.wait(120)
    finally:
        stop(proc)
    output = log.read_text(encoding="utf-8", errors="replace")
    assert returncode != 0, output[-2000:]
    [reason] = [line for line in output.splitlines() if "refusing to start" in line]
    assert reason == (
        "visionqueue: refusing to start: production mode refuses placeholder or missing "
        "secrets: VQ_SIGNING_KEY, VQ_API_KEYS, VQ_WEBHOOK_SECRETS"
    )
    assert "Traceback" not in output
    with pytest.raises(httpx.TransportError):  # it never listened
        httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2)


def refusal_at_start(env: dict[str, str], log: Path) -> str:
    """Start a front that must refuse to start; return its one "refusing to start" line."""
    port = free_port()
    proc = spawn(
        [str(BIN / "bentoml"), "serve", "service:VisionQueue", "--port", str(port)],
        {**os.environ, **env, "VQ_PORT": str(port)},
        log,
    )
    try:
        returncode = proc.wait(120)
    finally:
        stop(proc)
    output = log.read_text(encoding="utf-8", errors="replace")
    assert returncode != 0, output[-2000:]
    assert "Traceback" not in output
    with pytest.raises(httpx.TransportError):  # it never listened
        httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2)
    [reason] = [line for line in output.splitlines() if "refusing to start" in line]
    return reason


def test_production_with_api_keys_refuses_an_open_metrics_route(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **server_env,
        "VQ_DATA_DIR": str(tmp_path / "data"),
        "VQ_ENV": "production",
        "VQ_API_KEYS": f"vq-{uuid.uuid4().hex}",
        "VQ_SIGNING_KEY": secrets.token_hex(32),
        "VQ_WEBHOOK_SECRETS": _whsec(),
    }
    assert refusal_at_start(env, tmp_path / "bento.log") == (
        "visionqueue: refusing to start: production mode refuses placeholder or missing "
        "secrets: VQ_METRICS_TOKEN"
    )


class Production:
    def __init__(self, url: str, api_key: str, metrics_token: str) -> None:
        self.url, self.api_key, self.metrics_token = url, api_key, metrics_token


@pytest.fixture(scope="module")
def production(server_env: dict[str, str], session_dir: Path) -> Iterator[Production]:
    """A production front with real secrets and a metrics token (embedded backends)."""
    work = session_dir / f"production-{uuid.uuid4().hex[:6]}"
    api_key, metrics_token = f"vq-{uuid.uuid4().hex}", f"scrape-{uuid.uuid4().hex}"
    env = {
        **server_env,
        "VQ_DATA_DIR": str(work / "data"),
        "VQ_ENV": "production",
        "VQ_API_KEYS": api_key,
        "VQ_SIGNING_KEY": secrets.token_hex(32),
        "VQ_WEBHOOK_SECRETS": _whsec(),
        "VQ_METRICS_TOKEN": metrics_token,
    }
    work.mkdir(parents=True)
    migrate(env)
    with bento_server(env, work / "bento.log") as url:
        yield Production(url, api_key, metrics_token)


def test_production_with_real_secrets_serves_keyed_requests(production: Production) -> None:
    image = {"image": ("a.jpg", images.jpeg(64, 64, seed=3), "image/jpeg")}
    refused = httpx.post(f"{production.url}/predict", files=image, timeout=60)
    assert refused.status_code == 401
    keyed = httpx.post(
        f"{production.url}/predict",
        files=image,
        headers={"Authorization": f"Bearer {production.api_key}"},
        timeout=60,
    )
    assert keyed.status_code == 200, keyed.text


def test_metrics_need_the_token_when_one_is_set(production: Production) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": production.api_key}):
        refused = httpx.get(f"{production.url}/metrics", headers=headers, timeout=10)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer"
    scraped = httpx.get(
        f"{production.url}/metrics",
        headers={"Authorization": f"Bearer {production.metrics_token}"},
        timeout=10,
    )
    assert scraped.status_code == 200
    assert 'vq_jobs{status="pending"}' in scraped.text


def test_probes_stay_open_and_answer_a_burst(production: Production) -> None:
    started = time.monotonic()
    with httpx.Client(timeout=10) as client:
        answers = [client.get(f"{production.url}/readyz") for _ in range(100)]
    assert {a.status_code for a in answers} == {200}
    assert answers[-1].json()["checks"]["database"] == "ok"
    assert time.monotonic() - started < 30
