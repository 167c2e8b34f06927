"""The lane process: job and bulk passes in a process and scheduling group of their own.

A real child process, a real ONNX graph (the seeded random-init ResNet18's export): the same
bits as the single-threaded session in the classifier, its own session at nice 19 with its
lanes at ``SCHED_IDLE``, a killed lane process replaced and the pass retried, a model's error
answered without losing the lane, and the lane process gone once its classifier is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_store.inference import BatchClassifier, load_classifier
from model_store.onnx_backend import OnnxRunner
from visionqueue.dataplane.cpu_priority import thread_is_idle
from visionqueue.dataplane.lane_process import SESSION_NICE, LaneError, LaneProcess, LaneRunner

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def graph(stored_model) -> Path:  # type: ignore[no-untyped-def]
    """The ONNX export of the test model (what the classifier's lanes run)."""
    return Path(on_onnxruntime(stored_model).onnx.path)


def on_onnxruntime(stored_model, **options: Any) -> BatchClassifier:  # type: ignore[no-untyped-def]
    """The test model loaded as the classifier loads it, on ONNX Runtime."""
    labels = tuple(str(i) for i in range(1000))
    where = (stored_model.path, stored_model.tag, stored_model.weights_origin, labels)
    return load_classifier(*where, backend="onnxruntime", **options)


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.standard_normal((4, 3, 224, 224), dtype=np.float32)


@pytest.fixture
def lanes() -> Iterator[LaneProcess]:
    process = LaneProcess(2, 10, idle=True)
    yield process
    process.close()


def test_lanes_answer_bit_for_bit_like_a_session_in_the_classifier(
    graph: Path, batch: np.ndarray, lanes: LaneProcess
) -> None:
    local = OnnxRunner(graph, 1)
    for size in (1, 4):
        assert np.array_equal(lanes.logits(graph, batch[:size]), local.logits(batch[:size]))


def test_the_classifier_uses_the_lane_process_for_its_background_passes(
    stored_model,  # type: ignore[no-untyped-def]
    lanes: LaneProcess,
) -> None:
    classifier = on_onnxruntime(
        stored_model, background_session=True, background_runner=lanes.runner
    )
    assert isinstance(classifier.background, LaneRunner)
    assert lanes.pid is not None  # the warm-up's background pass started it
    crops = np.random.default_rng(0).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)
    serial = classifier.predict_proba(crops)
    assert np.array_equal(classifier.predict_proba(crops, background=True), serial)


def test_the_lane_process_leads_its_own_session_at_nice_19_with_idle_lanes(
    graph: Path, batch: np.ndarray, lanes: LaneProcess
) -> None:
    lanes.logits(graph, batch[:1])
    pid = lanes.pid
    assert pid is not None and pid != os.getpid()
    assert os.getsid(pid) == pid  # a session, and so a scheduling group, of its own
    autogroup = Path(f"/proc/{pid}/autogroup")
    if autogroup.exists():  # kernels with autogroups
        assert autogroup.read_text().split()[-1] == str(SESSION_NICE)
    idle = {int(tid) for tid in os.listdir(f"/proc/{pid}/task") if thread_is_idle(int(tid))}
    # the two lanes (and what their runtime starts from them, which inherits the policy);
    # the main thread only waits, at its own policy
    assert len(idle) >= 2 and pid not in idle, idle


def test_concurrent_lanes_each_get_their_own_answer(
    graph: Path, batch: np.ndarray, lanes: LaneProcess
) -> None:
    local = OnnxRunner(graph, 1)
    expected = [local.logits(batch[i : i + 1]) for i in range(4)]
    got: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        for _ in range(3):
            got[i] = lanes.logits(graph, batch[i : i + 1])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]  # more than lanes
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(4):
        assert np.array_equal(got[i], expected[i])


def test_a_killed_lane_process_is_started_again_and_the_pass_retried(
    graph: Path, batch: np.ndarray, lanes: LaneProcess
) -> None:
    expected = lanes.logits(graph, batch[:2])
    first = lanes.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert np.array_equal(lanes.logits(graph, batch[:2]), expected)
    assert lanes.pid not in (None, first)


def test_a_pass_the_model_refuses_is_an_error_and_the_lane_goes_on(
    graph: Path, batch: np.ndarray, lanes: LaneProcess
) -> None:
    lanes.logits(graph, batch[:1])
    pid = lanes.pid
    with pytest.raises(LaneError, match=r"(?i)invalid|dimension|shape"):
        lanes.logits(graph, np.zeros((1, 3, 7, 7), dtype=np.float32))
    with pytest.raises(LaneError, match=r"NoSuchFile|No such file|not found|Load model"):
        lanes.logits(graph.with_name("missing.onnx"), batch[:1])
    assert lanes.logits(graph, batch[:1]).shape == (1, 1000)
    assert lanes.pid == pid  # not restarted: the errors were the model's, answered


def test_a_lane_process_that_cannot_start_fails_the_pass_and_is_tried_again(
    graph: Path, batch: np.ndarray, lanes: LaneProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(LaneError, match="could not start"):
        lanes.logits(graph, batch[:1])
    assert lanes.pid is None
    monkeypatch.undo()
    assert lanes.logits(graph, batch[:1]).shape == (1, 1000)


def test_the_lane_process_ends_when_its_classifier_is_killed(graph: Path) -> None:
    script = textwrap.dedent(
        f"""
        import numpy as np
        from pathlib import Path
        from visionqueue.dataplane.lane_process import LaneProcess
        lanes = LaneProcess(2, 10, idle=True)
        lanes.logits(Path({str(graph)!r}), np.zeros((1, 3, 224, 224), np.float32))
        print(lanes.pid, flush=True)
        import time; time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # running
        parent.kill()  # SIGKILL: no clean-up runs in the classifier
        parent.wait()
        deadline = time.monotonic() + 30  # a liveness wait, not a timing assertion
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.05)
        assert not _alive(child), "the lane process outlived its classifier"
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
