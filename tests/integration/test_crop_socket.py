"""The front -> classifier crop socket on a real stack: today's answers, counted, and no hang.

``VQ_CLASSIFIER_TRANSPORT=socket`` carries the front's calls into the classifier's batch queues
over a Unix socket per classifier worker instead of BentoML's HTTP client. The answers must be
those of the HTTP call bit for bit, BentoML's per-endpoint request metrics (which the dashboard
reads) must still count the classifier's calls, and a classifier that dies must give the
caller our 503 envelope at once, then answer again once BentoML has restarted it. The socket
stack runs with ``VQ_CLASSIFIER_TOKEN`` set: the token guards the classifier's HTTP routes only.
"""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.observability_factories import Scrape
from tests.support import images
from tests.support.launcher import started_by
from tests.support.servers import bento_server
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FRONT_DEADLINE_S = 90  # service.CLASSIFY_DEADLINE_S (importing service.py loads the settings)
# BentoML's labels; runner_name says which transport carried the call
CLASSIFIER_CALLS = {
    "service_name": "classifier",
    "endpoint": "/classify",
    "runner_name": "classifier:crop-socket",
}


def serve(server_env: dict[str, str], folder: Path, transport: str, **extra: str) -> Iterator[str]:
    env = {
        **server_env,
        "VQ_DATA_DIR": str(folder / f"data-{transport}"),
        "VQ_CLASSIFIER_TRANSPORT": transport,
        **extra,
    }
    with bento_server(env, folder / f"bento-{transport}.log") as url:
        yield url


@pytest.fixture(scope="module")
def over_socket(server_env: dict[str, str], session_dir: Path) -> Iterator[str]:
    # the classifier's HTTP routes want a token (the front's model_info sends it); the
    # crop socket needs none
    token = secrets.token_urlsafe(24)
    yield from serve(server_env, session_dir / "crop-socket", "socket", VQ_CLASSIFIER_TOKEN=token)


@pytest.fixture(scope="module")
def over_http(server_env: dict[str, str], session_dir: Path) -> Iterator[str]:
    yield from serve(server_env, session_dir / "crop-socket", "http")


def classifier_workers(url: str, session_dir: Path) -> list[psutil.Process]:
    """The classifier worker processes of the server at ``url`` (started with its data dir)."""
    del url
    return [
        proc
        for proc in started_by(session_dir / "crop-socket" / "data-socket")
        if "classifier" in proc.cmdline()
    ]


def predict(url: str, data: bytes) -> httpx.Response:
    return httpx.post(
        f"{url}/predict", files={"image": ("a", data)}, params={"top_k": 1000}, timeout=120
    )


def without_timing(resp: httpx.Response) -> dict[str, object]:
    assert resp.status_code == 200, resp.text[:300]
    body = dict(resp.json())
    body.pop("processing_time")
    return body


def test_answers_equal_the_http_calls_bit_for_bit(
    over_socket: str, over_http: str, session_dir: Path
) -> None:
    payloads = [images.skimage_photo(name) for name in ("chelsea.png", "coffee.png", "rocket.jpg")]
    socket_answers = [without_timing(predict(over_socket, data)) for data in payloads]
    http_answers = [without_timing(predict(over_http, data)) for data in payloads]
    assert socket_answers == http_answers  # every class's confidence, as JSON floats
    # the answers differ between images (or a mix-up could not show)
    assert len({str(a["predictions"][:3]) for a in socket_answers}) == len(payloads)  # type: ignore[index]
    # and they came over the crop socket: besides listening, the classifier holds a connection
    (worker,) = classifier_workers(over_socket, session_dir)
    on_crop_socket = [c for c in worker.net_connections(kind="unix") if "-crops-" in c.laddr]
    assert len(on_crop_socket) == 2, on_crop_socket


def test_bentomls_request_metrics_count_the_classifiers_calls(over_socket: str) -> None:
    before = Scrape.of(f"{over_socket}/metrics")
    sent = 5
    for seed in range(sent):
        assert predict(over_socket, images.jpeg(320, 240, seed=seed)).status_code == 200
    after = Scrape.of(f"{over_socket}/metrics")

    def delta(name: str, **labels: str) -> float:
        return after.total(name, **labels) - before.total(name, **labels)

    assert (
        delta("bentoml_service_request_total", **CLASSIFIER_CALLS, http_response_code="200") == sent
    )
    assert delta("bentoml_service_request_duration_seconds_count", **CLASSIFIER_CALLS) == sent
    assert after.total("bentoml_service_request_in_progress", **CLASSIFIER_CALLS) == 0
    assert delta("bentoml_service_adaptive_batch_size_sum", method_name="classify") == sent


def test_a_dead_classifier_is_a_prompt_503_and_its_restart_answers_again(
    over_socket: str, session_dir: Path
) -> None:
    data = images.jpeg(320, 240, seed=1)
    assert predict(over_socket, data).status_code == 200  # the connection is open
    (worker,) = classifier_workers(over_socket, session_dir)
    worker.send_signal(signal.SIGKILL)
    worker.wait(30)

    started = time.monotonic()
    dead = predict(over_socket, data)
    waited = time.monotonic() - started
    assert dead.status_code == 503, dead.text[:300]
    assert dead.json()["error"]["code"] == "service_unavailable"
    # an answer before the front's own deadline: the broken connection ended the call
    assert waited < FRONT_DEADLINE_S

    # BentoML restarts the worker; the front reconnects to its new socket
    wait_until(
        lambda: predict(over_socket, data).status_code == 200,
        180,
        "/predict answers again after the classifier's restart",
        interval=1,
    )
    (restarted,) = classifier_workers(over_socket, session_dir)
    assert restarted.pid != worker.pid
