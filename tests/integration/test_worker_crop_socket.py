"""A worker on the front's host sends its job crops into the classifier's crop sockets itself.

On the embedded default the front names the classifier's crop sockets (``GET
/v1/batches/crops/classifier``); a worker that can open them never posts a chunk to the
front's ``POST /v1/batches/crops``: its ``vq_worker_classifier_calls_total`` counts its calls
under ``crop_socket``, and the classifier's crop-socket calls count them too. A worker told
``VQ_CLASSIFIER_TRANSPORT=http`` posts to the front as before. Either way the job's answer is
the one ``/predict`` gives, and a classifier worker killed between two jobs (its sockets
reopened by BentoML's restart) costs the next job nothing but a reconnect.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.integration.observability_factories import Scrape
from tests.support import images
from tests.support.launcher import started_by
from tests.support.servers import free_port
from tests.support.stack import Stack
from tests.support.waiting import wait_for_job, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOCKET_CALLS = {
    "service_name": "classifier",
    "endpoint": "/classify",
    "runner_name": "classifier:crop-socket",
}


@contextlib.contextmanager
def worker(stack: Stack, **env: str) -> Iterator[str]:
    """A worker on the stack, with its metrics served; yields their URL."""
    port = free_port()
    with stack.worker(concurrency=2, env={"VQ_WORKER_METRICS_PORT": str(port), **env}):
        yield f"http://127.0.0.1:{port}/metrics"


def calls(metrics_url: str) -> dict[str, float]:
    """The worker's classifier calls by the way they went."""
    scrape = Scrape.of(metrics_url)
    return {
        via: scrape.total("vq_worker_classifier_calls_total", via=via)
        for via in ("crop_socket", "front", "classifier_url")
    }


def socket_calls(stack: Stack) -> float:
    """Calls the classifier's crop sockets took (the front's and the workers')."""
    return Scrape.of(f"{stack.url}/metrics").total("bentoml_service_request_total", **SOCKET_CALLS)


def classified(stack: Stack, name: str) -> list[tuple[str, float]]:
    """Submit one photo as a job, wait for it; its top-5 (class, confidence)."""
    data = images.skimage_photo(name)
    resp = httpx.post(f"{stack.url}/classify", files={"image": (name, data)}, timeout=30)
    assert resp.status_code == 202, resp.text
    final = wait_for_job(stack.url, resp.json()["task_id"], 90, route="/task-status/{id}")
    assert final["status"] == "completed", final
    return [(p["class"], round(p["confidence"], 4)) for p in final["result"]["predictions"]]


def predicted(stack: Stack, name: str) -> list[tuple[str, float]]:
    data = images.skimage_photo(name)
    resp = httpx.post(f"{stack.url}/predict", files={"image": (name, data)}, timeout=30)
    assert resp.status_code == 200, resp.text
    return [(p["class"], round(p["confidence"], 4)) for p in resp.json()["predictions"]]


def test_a_worker_on_this_host_skips_the_front_and_one_told_http_does_not(stack: Stack) -> None:
    photo = "coffee.png"
    want = predicted(stack, photo)
    with worker(stack) as metrics:
        before = socket_calls(stack)
        assert classified(stack, photo) == want
        assert calls(metrics) == {"crop_socket": 1, "front": 0, "classifier_url": 0}
        assert socket_calls(stack) == before + 1  # the classifier took the worker's call

    with worker(stack, VQ_CLASSIFIER_TRANSPORT="http") as metrics:
        assert classified(stack, photo) == want
        assert calls(metrics) == {"crop_socket": 0, "front": 1, "classifier_url": 0}


def test_a_restarted_classifier_worker_costs_the_next_job_a_reconnect(stack: Stack) -> None:
    with worker(stack) as metrics:
        classified(stack, "astronaut.png")  # the worker's thread holds a socket connection now
        (classifier,) = classifier_workers(stack)
        classifier.send_signal(signal.SIGKILL)
        wait_until(lambda: predicted_or_none(stack), 120, "the classifier restarted")
        assert classified(stack, "coffee.png") == predicted(stack, "coffee.png")
        # the second job reconnected to a socket instead of falling back to the front
        assert calls(metrics) == {"crop_socket": 2, "front": 0, "classifier_url": 0}


def classifier_workers(stack: Stack) -> list[psutil.Process]:
    """The classifier worker processes of the stack's ``bentoml serve`` (other servers of the
    session share its data folder: found by its port)."""
    port = str(urlsplit(stack.url).port)
    (server,) = [
        proc
        for proc in started_by(Path(stack.env["VQ_DATA_DIR"]))
        if "serve" in proc.cmdline() and port in proc.cmdline()
    ]
    return [p for p in server.children(recursive=True) if "classifier" in p.cmdline()]


def predicted_or_none(stack: Stack) -> bool:
    try:
        return bool(predicted(stack, "coffee.png"))
    except (AssertionError, httpx.HTTPError):
        return False
