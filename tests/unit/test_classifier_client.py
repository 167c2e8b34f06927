"""The workers' client of a classifier served on its own: errors a job can retry, or not."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from jobs.classifier_client import ClassifierClient, HttpWire, front_auth_headers
from model_store.serving import served_specs, tag_id
from tests.support.servers import free_port
from visionqueue.core.errors import ModelNotFound, Unavailable, Unprocessable
from visionqueue.core.settings import ServerSettings
from visionqueue.dataplane.crops_wire import unpack_crops

SPECS = served_specs(["resnet18", "pets"], "resnet18", "")
VERSION = {"tag": "resnet18:v1", "weights": "random-init-seed-0", "labels": ["a", "b", "c"]}


@contextlib.contextmanager
def classifier_answering(status: int) -> Iterator[str]:
    """A loopback HTTP server answering BentoML's protocol (``status`` for classify calls)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/model_info":
                answer: object = {**VERSION, "versions": {str(tag_id("resnet18:v1")): VERSION}}
                code = 200
            else:
                # the classifier's priority queue, in the job's class of work
                assert self.path == "/prioritized_classify", self.path
                assert body["priority"] in ("jobs", "bulk"), body["priority"]
                crops = unpack_crops(body["crops"])
                rows = [[0.2, 0.7, 0.1, 0.01, tag_id("resnet18:v1")] for _ in crops]
                answer, code = rows, status
            data = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def client(url: str, max_batch: int = 16) -> ClassifierClient:
    return ClassifierClient(HttpWire(url, httpx.Client(timeout=5)), SPECS, max_batch)


def test_an_unreachable_classifier_is_unavailable() -> None:
    with pytest.raises(Unavailable) as caught:
        client(f"http://127.0.0.1:{free_port()}").current("resnet18")
    assert caught.value.code == "classifier_unavailable"


def test_rows_come_back_in_chunks_with_the_version_that_ran() -> None:
    crops = np.zeros((5, 8, 8, 3), dtype=np.uint8)
    with classifier_answering(200) as url:
        probs, version = client(url, max_batch=2).classify("resnet18", crops)
    assert probs.shape == (5, 3)
    assert probs.dtype == np.float32
    assert version == VERSION


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (503, Unavailable, "classifier_unavailable"),
        (401, Unavailable, "classifier_http_401"),  # the deployment's token, not the job
        (403, Unavailable, "classifier_http_403"),
        (400, Unprocessable, "classifier_http_400"),
    ],
)
def test_a_classifier_error_is_retried_only_when_transient(
    status: int, error: type[Exception], code: str
) -> None:
    with classifier_answering(status) as url, pytest.raises(error) as caught:
        client(url).classify("resnet18", np.zeros((1, 8, 8, 3), dtype=np.uint8))
    assert caught.value.code == code  # type: ignore[attr-defined]


def test_models_are_the_served_ones() -> None:
    direct = client("http://127.0.0.1:9")
    assert direct.model_name(None) == direct.model_name("") == "resnet18"
    assert direct.model_name("pets") == "pets"
    with pytest.raises(ModelNotFound):
        direct.model_name("zebra")


def test_workers_send_the_service_token_else_the_first_key_else_nothing() -> None:
    keys = [SecretStr("key-a"), SecretStr("key-b")]
    both = ServerSettings(api_keys=keys, service_token=SecretStr("svc"))
    assert front_auth_headers(both) == {"Authorization": "Bearer svc"}
    assert front_auth_headers(ServerSettings(api_keys=keys)) == {"Authorization": "Bearer key-a"}
    assert front_auth_headers(ServerSettings()) == {}
