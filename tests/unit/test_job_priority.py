"""A job's priority: checked at submission, kept on its row (migration 0007), claimed with it,
shown with its class of work, and sent with the crops of the job's batch."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from jobs import classify_crops
from jobs.classifier_client import ClassifierClient
from jobs.classify import process_batch
from jobs.crop_socket_wire import CropSocketsGone, SocketWire
from jobs.lease_keeper import LeaseKeeper
from jobs.resources import Resources
from jobs.views import job_view
from model_store.preprocess import IMAGENET_PREPROCESSING
from persistence import job_leases, jobs_repo
from persistence.db import dispose_engines, get_engine, session_scope
from persistence.local_images import LocalImageStore
from persistence.migrate import upgrade_database
from visionqueue.api.submit import check_priority
from visionqueue.core.errors import Unavailable, Unprocessable, UnsupportedMediaType
from visionqueue.core.settings import DatabaseSettings, Settings
from visionqueue.dataplane.registry import configured_specs


@pytest.fixture
def res(tmp_path: Path) -> Iterator[Resources]:
    url = f"sqlite:///{tmp_path}/vq.db"
    upgrade_database(url)
    settings = Settings(data_dir=tmp_path, database=DatabaseSettings(url=url))
    engine = get_engine(url)
    store = LocalImageStore(tmp_path / "images", "http://127.0.0.1:3000", b"k")
    with httpx.Client() as http:
        yield Resources(settings, engine, store, http, LeaseKeeper(engine, 15.0))
    dispose_engines(url)


def test_priority_is_checked_at_submission() -> None:
    assert check_priority(None) == check_priority("") == "normal"
    assert check_priority(" HIGH ") == "high"
    assert check_priority("low") == "low"
    with pytest.raises(Unprocessable) as caught:
        check_priority("urgent")
    assert (caught.value.status, caught.value.code) == (422, "invalid_priority")


@pytest.mark.parametrize(
    ("priority", "work_class"), [("high", "jobs"), ("normal", "jobs"), ("low", "bulk")]
)
def test_the_row_keeps_its_priority_and_the_claim_and_view_carry_it(
    res: Resources, priority: str, work_class: str
) -> None:
    with session_scope(res.engine) as session:
        job = jobs_repo.create_job(
            session,
            image_key="k",
            image_sha256="0" * 64,
            content_type="image/png",
            image_size=1,
            width=1,
            height=1,
            priority=priority,
        )
        job_id = job.id
    with session_scope(res.engine) as session:
        claimed = job_leases.claim(session, job_id, holder="w", lease_s=15, max_attempts=3)
        view = job_view(jobs_repo.require_job(session, job_id, None), None)
    assert claimed is not None and claimed.priority == priority
    assert (view["priority"], view["work_class"]) == (priority, work_class)


def test_a_job_row_from_before_0007_is_normal(res: Resources) -> None:
    with session_scope(res.engine) as session:
        job = jobs_repo.create_job(
            session,
            image_key="k",
            image_sha256="0" * 64,
            content_type="image/png",
            image_size=1,
            width=1,
            height=1,
        )
        job_id = job.id
    with session_scope(res.engine) as session:
        assert jobs_repo.require_job(session, job_id, None).priority == "normal"


class FakeFront(BaseHTTPRequestHandler):
    """The front's two model routes and its crops routes, counted (what a worker calls); its
    classifier is called over HTTP, so it names no crop socket."""

    calls: ClassVar[list[tuple[str, dict[str, str]]]] = []
    spec: ClassVar[dict[str, Any]] = IMAGENET_PREPROCESSING.to_spec()
    unready: ClassVar[int] = 0  # answers "not ready" to this many model descriptions first
    # its answer to GET /v1/batches/crops/classifier: no socket (its classifier is over HTTP)
    probe: ClassVar[tuple[int, dict[str, Any]]] = (200, {"sockets": []})

    def do_GET(self) -> None:
        self.calls.append((self.path, {}))
        if self.path == "/v1/batches/crops/classifier":
            self._answer(self.probe[1], self.probe[0])
        elif self.path == "/v1/models":
            self._answer({"default": "resnet18"})
        elif FakeFront.unready > 0:
            FakeFront.unready -= 1
            self._answer({"name": "resnet18", "ready": False, "reason": "busy"})
        else:
            self._answer({"name": "resnet18", "ready": True, "preprocessing": self.spec})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query))
        body = self.rfile.read(int(self.headers["Content-Length"]))
        n, h, w, c = (int(v) for v in params["shape"].split(","))
        assert len(body) == n * h * w * c
        self.calls.append((url.path, params))
        model = {"name": "resnet18", "tag": "resnet18:v1", "weights": "seed:0"}
        predictions = [[{"label": "tench", "score": 1.0}]] * n
        self._answer({"model": model, "preprocessing": self.spec, "predictions": predictions})

    def _answer(self, body: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def _job(res: Resources, data: bytes, priority: str) -> str:
    key = res.store.put(data, "image/png")
    with session_scope(res.engine) as session:
        job = jobs_repo.create_job(
            session,
            image_key=key,
            image_sha256="0" * 64,
            content_type="image/png",
            image_size=len(data),
            width=1,
            height=1,
            priority=priority,
        )
        return job.id


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def front(res: Resources) -> Iterator[Resources]:
    """``res`` pointed at a ``FakeFront`` on loopback."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeFront)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeFront.calls, FakeFront.unready = [], 0
    FakeFront.probe = (200, {"sockets": []})
    worker = res.settings.worker.model_copy(
        update={"front_url": f"http://127.0.0.1:{server.server_address[1]}"}
    )
    settings = res.settings.model_copy(update={"worker": worker})
    try:
        yield Resources(settings, res.engine, res.store, res.http, res.leases)
    finally:
        server.shutdown()
        server.server_close()


def test_a_model_the_front_cannot_describe_yet_is_asked_again(
    front: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(classify_crops, "DESCRIBE_PAUSES_S", (0.0, 0.0))
    FakeFront.unready = 2  # the first two asks find the classifier busy, the third does not
    assert classify_crops.describe_model(front, None) == ("resnet18", FakeFront.spec)
    FakeFront.unready = 3
    with pytest.raises(Unavailable) as caught:  # three in a row: the job's retry takes over
        classify_crops.describe_model(front, "other")
    assert caught.value.code == "model_not_ready"


def test_a_batch_of_jobs_is_cropped_here_and_sent_once_per_class(front: Resources) -> None:
    first = [_job(front, _png(i), p) for i, p in enumerate(("high", "low", "normal"))]
    broken = _job(front, b"not an image", "normal")
    outcomes = process_batch([*first, broken], front)
    again = process_batch([_job(front, _png(9), "normal")], front)
    assert [outcomes[j].status for j in first] == ["completed"] * 3  # type: ignore[union-attr]
    assert isinstance(outcomes[broken], UnsupportedMediaType)  # what /predict says of it
    assert [o.status for o in again.values()] == ["completed"]  # type: ignore[union-attr]
    crops = [(p["priority"], p["shape"]) for path, p in FakeFront.calls if path.endswith("crops")]
    # one call per class, the broken image never sent; the model asked about once per process
    assert crops == [("jobs", "2,224,224,3"), ("bulk", "1,224,224,3"), ("jobs", "1,224,224,3")]
    assert [path for path, _ in FakeFront.calls if not path.endswith("crops")] == [
        "/v1/batches/crops/classifier",  # no socket this process can open: post to the front
        "/v1/models",
        "/v1/models/resnet18",
    ]
    with session_scope(front.engine) as session:
        view = job_view(jobs_repo.require_job(session, first[1], None), None)
    assert (view["work_class"], view["result"]["preprocessing"]) == ("bulk", "exact")


@pytest.mark.parametrize(
    "probe",
    [
        (200, {"sockets": ["/nonexistent/Classifier-crops-1.sock"]}),  # another host's path
        (404, {"error": {"code": "not_found", "message": "Not Found"}}),  # a front before it
        (401, {"error": {"code": "unauthorized", "message": "no"}}),  # its token refused
    ],
)
def test_a_worker_that_cannot_open_the_named_sockets_posts_to_the_front(
    front: Resources, probe: tuple[int, dict[str, Any]]
) -> None:
    FakeFront.probe = probe
    outcomes = process_batch([_job(front, _png(1), "normal")], front)
    assert [o.status for o in outcomes.values()] == ["completed"]  # type: ignore[union-attr]
    assert [path for path, _ in FakeFront.calls if path.endswith("crops")] == ["/v1/batches/crops"]
    assert (front.local, front.local_checked) == (None, True)  # not asked again


def test_a_front_that_is_starting_is_asked_about_its_sockets_again(front: Resources) -> None:
    FakeFront.probe = (503, {"error": {"code": "model_not_ready", "message": "starting"}})
    with pytest.raises(Unavailable):
        classify_crops.local_classifier(front)
    assert not front.local_checked
    FakeFront.probe = (200, {"sockets": []})
    assert classify_crops.local_classifier(front) is None
    assert front.local_checked


def test_sockets_gone_send_the_retry_back_to_the_front(front: Resources) -> None:
    """A server restarted elsewhere: the attempt fails (its task retries it), and the next
    attempt asks the front where to send its crops."""
    sockets = SocketWire(lambda name: {"sockets": []}, [Path("/nonexistent/c-1.sock")])
    front.local = ClassifierClient(sockets, configured_specs(front.settings.model), 16)
    front.local_checked = True
    front.front_models[None] = ("resnet18", FakeFront.spec)  # described before the restart
    job = _job(front, _png(2), "normal")
    (outcome,) = process_batch([job], front).values()
    assert isinstance(outcome, CropSocketsGone)  # Unavailable: its task retries it
    assert (front.local, front.local_checked) == (None, False)
    # the next attempt (here: the next job; a retry waits out its lease) asks the front again
    (after,) = process_batch([_job(front, _png(3), "normal")], front).values()
    assert after.status == "completed"  # type: ignore[union-attr]
    assert [path for path, _ in FakeFront.calls if path.endswith("crops")] == ["/v1/batches/crops"]
