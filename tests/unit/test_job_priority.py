"""A job's priority: checked at submission, kept on its row (migration 0007), claimed with it,
shown with its class of work, and sent with the job's /predict call."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs.classify import classify_bytes
from jobs.lease_keeper import LeaseKeeper
from jobs.resources import Resources
from jobs.views import job_view
from persistence import job_leases, jobs_repo
from persistence.db import dispose_engines, get_engine, session_scope
from persistence.local_images import LocalImageStore
from persistence.migrate import upgrade_database
from visionqueue.api.submit import check_priority
from visionqueue.core.errors import Unprocessable
from visionqueue.core.settings import DatabaseSettings, Settings
from visionqueue.dataplane.priority import Priority


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


def test_a_jobs_predict_call_says_its_class(res: Resources) -> None:
    seen: list[str | None] = []

    class Front(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("X-VQ-Work-Class"))
            data = b'{"predictions": [], "work_class": "bulk"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Front)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        front = f"http://127.0.0.1:{server.server_address[1]}"
        worker = res.settings.worker.model_copy(update={"front_url": front})
        settings = res.settings.model_copy(update={"worker": worker})
        here = Resources(settings, res.engine, res.store, res.http, res.leases)
        classify_bytes(here, b"x", "image/png", 5, None, Priority.BULK)
        classify_bytes(here, b"x", "image/png", 5)
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["bulk", "jobs"]
