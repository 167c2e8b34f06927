"""A worker's blocking client of the classifier's crop sockets: rows, class, restarts, fallback.

Each classifier worker runs in a process of its own (so that it can die and come back at the
same path, as BentoML restarts one), serving the real ``serve_crops``
(``tests.support.crop_servers``): its answer row for a crop is the crop's pixel sum, the
worker's number and the class of work the frame carried.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs.crop_socket_wire import CropSocketsGone, SocketWire, reachable
from tests.support.crop_servers import socket_folder, start_crop_server
from visionqueue.core.errors import Unavailable, Unprocessable
from visionqueue.dataplane.priority import Priority


@pytest.fixture
def folder() -> Iterator[Path]:
    with socket_folder() as path:
        yield path


class Classifiers:
    """Classifier worker processes, stopped at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, path: Path, name: int) -> subprocess.Popen[str]:
        proc = start_crop_server(path, name)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str]) -> None:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def classifiers() -> Iterator[Classifiers]:
    running = Classifiers()
    yield running
    for proc in running.procs:
        running.stop(proc)


class Front:
    """The front's ``GET /v1/batches/crops/classifier``, as the wire asks it; counted."""

    def __init__(self, sockets: list[Path]) -> None:
        self.sockets = sockets
        self.asked: list[str | None] = []

    def __call__(self, name: str | None) -> dict[str, Any]:
        self.asked.append(name)
        return {
            "model": name or "resnet18",
            "api": "classify",
            "sockets": [str(p) for p in self.sockets],
            "described": {"tag": "resnet18:v1", "versions": {}},
        }


def crops_of(*values: int) -> np.ndarray:
    return np.stack([np.full((8, 8, 3), v, np.uint8) for v in values])


def test_rows_come_back_in_their_class_and_one_connection_serves_every_call(
    folder: Path, classifiers: Classifiers
) -> None:
    path = folder / "c-1.sock"
    classifiers.start(path, 1)
    front = Front([path])
    wire = SocketWire(front, [path])
    jobs = wire.call("classify", crops_of(1, 2), Priority.JOBS)
    bulk = wire.call("classify", crops_of(3), Priority.BULK)
    assert jobs.tolist() == [[192.0, 1.0, 1.0], [384.0, 1.0, 1.0]]  # sum, worker, class
    assert bulk.tolist() == [[576.0, 1.0, 2.0]]
    assert front.asked == []  # the sockets it was built with answered: no need to ask


def test_an_error_answer_is_the_jobs_error_and_the_connection_stays_usable(
    folder: Path, classifiers: Classifiers
) -> None:
    path = folder / "c-1.sock"
    classifiers.start(path, 1)
    wire = SocketWire(Front([path]), [path])
    with pytest.raises(Unprocessable) as unknown:
        wire.call("no-such-api", crops_of(1), Priority.JOBS)
    assert unknown.value.code == "classifier_http_404"
    with pytest.raises(Unavailable) as bug:  # a 500, retried as over HTTP
        wire.call("classify", crops_of(255), Priority.JOBS)
    assert bug.value.code == "classifier_unavailable"
    assert wire.call("classify", crops_of(1), Priority.JOBS)[0, 0] == 192.0


def test_a_restarted_classifier_costs_a_reconnect_not_a_failed_call(
    folder: Path, classifiers: Classifiers
) -> None:
    path = folder / "c-1.sock"
    first = classifiers.start(path, 1)
    front = Front([path])
    wire = SocketWire(front, [path])
    assert wire.call("classify", crops_of(1), Priority.JOBS)[0, 1] == 1.0
    classifiers.stop(first)
    classifiers.start(path, 2)  # BentoML's restart: the same path, a new listener
    assert wire.call("classify", crops_of(1), Priority.JOBS)[0, 1] == 2.0
    assert front.asked == []


def test_sockets_that_moved_are_asked_of_the_front_and_none_at_all_is_gone(
    folder: Path, classifiers: Classifiers
) -> None:
    old, new = folder / "old-1.sock", folder / "new-1.sock"
    first = classifiers.start(old, 1)
    front = Front([old])
    wire = SocketWire(front, [old])
    assert wire.call("classify", crops_of(1), Priority.JOBS)[0, 1] == 1.0
    classifiers.stop(first)
    classifiers.start(new, 2)  # a restarted server: a new private folder
    front.sockets = [new]
    assert wire.call("classify", crops_of(1), Priority.JOBS)[0, 1] == 2.0
    assert front.asked == [None]  # asked once, when the old socket refused
    front.sockets = []  # the front now calls its classifier over HTTP
    classifiers.stop(classifiers.procs[-1])
    with pytest.raises(CropSocketsGone) as gone:
        wire.call("classify", crops_of(1), Priority.JOBS)
    assert isinstance(gone.value, Unavailable)  # the job is retried, through the front


def test_describe_takes_the_fronts_answer_and_its_sockets(folder: Path) -> None:
    front = Front([folder / "a-1.sock", folder / "a-2.sock"])
    wire = SocketWire(front, [])
    assert wire.describe("resnet18") == {"tag": "resnet18:v1", "versions": {}}
    assert front.asked == ["resnet18"]


def test_reachable_means_a_listener_this_process_can_open(
    folder: Path, classifiers: Classifiers
) -> None:
    path = folder / "c-1.sock"
    assert not reachable([path])  # another host's path: nothing here
    (folder / "stale.sock").touch()  # a file, no listener
    assert not reachable([folder / "stale.sock"])
    classifiers.start(path, 1)
    assert reachable([folder / "stale.sock", path])
