"""A worker's embedded beat (``celery worker --beat``, as ``make run`` starts it) dies with it."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import psutil
import pytest

from tests.support.servers import BIN, spawn
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def test_a_sigkilled_worker_leaves_no_beat_behind(tmp_path: Path) -> None:
    env = {**os.environ, "VQ_DATA_DIR": str(tmp_path / "data"), "VQ_WORKER_METRICS_PORT": "0"}
    log = tmp_path / "worker.log"
    args = [str(BIN / "celery"), "-A", "jobs.celery_app:app", "worker", "--pool", "threads"]
    args += ["--concurrency", "1", "--beat", "--schedule", str(tmp_path / "beat-schedule")]
    worker = spawn(args, env, log)
    try:
        wait_until(lambda: "ready." in log.read_text(errors="replace"), 60, "the worker ready")
        beats = psutil.Process(worker.pid).children()
        assert beats, "the worker started no beat process"
        # the OOM killer, a crash: the worker alone dies, no chance to stop its children
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        _, alive = psutil.wait_procs(beats, timeout=15)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
