"""Interactive first, on a real stack: counted forward passes, not stopwatches.

One ``bentoml serve`` with small job passes and a deep job queue at the classifier
(``VQ_BATCH_MAX_SIZE_JOBS=2``, ``VQ_CALLS_IN_FLIGHT=8``: up to 8 merged calls of 16 crops,
64 passes, queued at once). A person's ``/predict`` sent while that backlog drains must run
after at most the pass in progress (and any that started before it reached the queue), not
behind the queue: the classifier's ``vq_class_forward_passes_total{work_class="jobs"}`` is
read before it is sent and when it is answered. A v2 infer whose ``timeout`` parameter
passes while a long bulk pass runs is answered 504 in v2's own shape, and the classifier's
``vq_class_images_classified_total{work_class="interactive"}`` proves its forward pass never
ran. Both on the serial path (``VQ_BACKGROUND_NICE=0``: one forward pass at a time); with
background lanes (the default) the person's pass runs beside the job passes, which go on in
threads at ``SCHED_IDLE`` (the lanes' two threads in the classifier, which send each pass to
the lane process, and that process' two lanes, no other thread of the server), and the same
backlog is overtaken. The lane process leads a session (a scheduling group) of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.observability_factories import Scrape
from tests.support import images
from tests.support.launcher import started_by
from tests.support.servers import bento_server
from visionqueue.dataplane.cpu_priority import thread_is_idle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BACKLOG = 160  # job images: 80 passes of 2 or more (a merged call of odd size leaves one)
JOBS_BATCH = 2


@pytest.fixture(scope="module")
def url(server_env: dict[str, str], session_dir: Path) -> Iterator[str]:
    env = {
        **server_env,
        "VQ_DATA_DIR": str(session_dir / "priority" / "data"),
        "VQ_BATCH_MAX_SIZE_JOBS": str(JOBS_BATCH),
        "VQ_BATCH_MAX_SIZE_BULK": "16",
        "VQ_CALLS_IN_FLIGHT": "8",
        "VQ_TORCH_THREADS": "1",
        "VQ_BACKGROUND_NICE": "0",  # the serial path: job passes take turns with a person's
    }
    with bento_server(env, session_dir / "priority" / "bento.log") as running:
        yield running


@pytest.fixture(scope="module")
def lanes_url(server_env: dict[str, str], session_dir: Path) -> Iterator[str]:
    env = {
        **server_env,
        "VQ_DATA_DIR": str(session_dir / "priority-lanes" / "data"),
        "VQ_BATCH_MAX_SIZE_JOBS": str(JOBS_BATCH),
        "VQ_CALLS_IN_FLIGHT": "8",
        "VQ_TORCH_THREADS": "2",  # two lanes
    }
    log = session_dir / "priority-lanes" / "bento.log"
    with bento_server(env, log) as running:
        assert "background lanes=2" in log.read_text()
        yield running


def passes(url: str, work_class: str) -> float:
    return Scrape.of(f"{url}/metrics").total("vq_class_forward_passes_total", work_class=work_class)


def images_of(url: str, work_class: str) -> float:
    return Scrape.of(f"{url}/metrics").total(
        "vq_class_images_classified_total", work_class=work_class
    )


class Backlog:
    """``count`` concurrent ``/predict`` calls in a class of work, as our workers send them."""

    def __init__(self, url: str, work_class: str, count: int) -> None:
        self.statuses: list[int] = []
        self.classes: set[str] = set()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._send(url, work_class, count),)
        )

    async def _send(self, url: str, work_class: str, count: int) -> None:
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:

            async def one(i: int) -> None:
                resp = await client.post(
                    f"{url}/predict",
                    files={"image": ("a.jpg", images.jpeg(64, 64, seed=i))},
                    headers={"X-VQ-Work-Class": work_class},
                )
                self.statuses.append(resp.status_code)
                if resp.status_code == 200:
                    self.classes.add(resp.json()["work_class"])

            await asyncio.gather(*(one(i) for i in range(count)))

    def __enter__(self) -> Backlog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(600)


def wait_for_passes(url: str, work_class: str, at_least: float) -> float:
    for _ in range(600):
        seen = passes(url, work_class)
        if seen >= at_least:
            return seen
        threading.Event().wait(0.05)
    pytest.fail(f"the {work_class} backlog never reached the classifier")


@pytest.mark.parametrize("path", ["serial", "lanes"])
def test_a_person_is_served_ahead_of_a_queued_job_backlog(
    path: str, request: pytest.FixtureRequest, session_dir: Path
) -> None:
    url: str = request.getfixturevalue("url" if path == "serial" else "lanes_url")
    start, start_images = passes(url, "jobs"), images_of(url, "jobs")
    person = images.jpeg(64, 64, seed=999)
    with Backlog(url, "jobs", BACKLOG) as backlog:
        # the backlog is queued at the classifier once its first passes have run
        before = wait_for_passes(url, "jobs", start + 3)
        resp = httpx.post(f"{url}/predict", files={"image": ("p.jpg", person)}, timeout=120)
        after = passes(url, "jobs")
        idle = idle_threads(session_dir / ("priority" if path == "serial" else "priority-lanes"))
    total = passes(url, "jobs") - start
    assert resp.status_code == 200, resp.text
    assert resp.json()["work_class"] == "interactive"
    assert backlog.statuses == [200] * BACKLOG and backlog.classes == {"jobs"}
    # every job image ran in a job pass, none in the person's
    assert images_of(url, "jobs") - start_images == BACKLOG
    assert total >= BACKLOG / JOBS_BATCH
    ran_meanwhile = after - before
    left_behind = start + total - after
    # first in, first out it would have waited for the dozens of passes queued ahead of it;
    # serial: the pass in progress, and those that began before it reached the classifier;
    # lanes: the passes the two lanes finish meanwhile, at lowered priority
    print(f"{path}: job passes while the person waited: {ran_meanwhile}; after: {left_behind}")
    assert ran_meanwhile <= (4 if path == "serial" else 8), (ran_meanwhile, left_behind)
    assert left_behind >= 20, (ran_meanwhile, left_behind)  # a real queue was overtaken
    # the two lanes run at SCHED_IDLE (VQ_BACKGROUND_POLICY=idle), in the lane process (with
    # what their runtime starts from them), and so do the two classifier threads that hand
    # them their passes; nothing else does
    lane_threads = idle.pop("lanes", 0)
    assert idle == ({"classifier": 2} if path == "lanes" else {}), idle
    assert lane_threads >= 2 if path == "lanes" else lane_threads == 0, lane_threads
    if path == "lanes":  # the lane process leads a session, a scheduling group, of its own
        (lanes,) = [p for p in started_by(session_dir / "priority-lanes" / "data") if is_lanes(p)]
        assert os.getsid(lanes.pid) == lanes.pid


def is_lanes(proc: psutil.Process) -> bool:
    return "visionqueue.dataplane.lane_process" in proc.cmdline()


def idle_threads(folder: Path) -> dict[str, int]:
    """Threads at ``SCHED_IDLE`` in each process of the server whose data is in ``folder``."""
    found: dict[str, int] = {}
    for proc in started_by(folder / "data"):
        role = "lanes" if is_lanes(proc) else "other"
        role = "classifier" if "classifier" in proc.cmdline() else role
        for thread in proc.threads():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                if thread_is_idle(thread.id):
                    found[role] = found.get(role, 0) + 1
    return found


def test_a_request_past_its_timeout_is_answered_504_and_never_classified(url: str) -> None:
    person = images.jpeg(64, 64, seed=7)
    start_interactive = images_of(url, "interactive")
    start_bulk = passes(url, "bulk")
    answers: list[httpx.Response] = []
    with Backlog(url, "bulk", 96):  # passes of 16 images: each far longer than 20 ms
        wait_for_passes(url, "bulk", start_bulk + 1)
        for _ in range(5):
            answers.append(infer(url, person, timeout_us=20_000))
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 504}, [r.text for r in answers]
    timed_out = [r for r in answers if r.status_code == 504]
    assert timed_out, "no request ever waited behind a bulk pass"
    for resp in timed_out:
        assert set(resp.json()) == {"error"}  # v2's error shape
        assert "deadline" in resp.json()["error"]
    # the forward pass ran for the answered ones only
    assert images_of(url, "interactive") - start_interactive == statuses.count(200)


def infer(url: str, data: bytes, timeout_us: int) -> httpx.Response:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "IMAGE",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 4 + len(data)},
                }
            ],
            "parameters": {"timeout": timeout_us},
        }
    ).encode()
    payload = header + len(data).to_bytes(4, "little") + data
    return httpx.post(
        f"{url}/v2/models/resnet18/infer",
        content=payload,
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
        timeout=120,
    )
