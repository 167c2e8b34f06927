"""A worker's embedded beat dies with the worker, even when the worker died before the beat armed.

The integration test (tests/integration/test_worker_beat.py) kills a live worker whose beat is
running; this one forges the race CI once hit under load: the worker is gone before its freshly
forked beat gets to ``beat_embedded_init``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from jobs import worker_setup
from tests.support.waiting import wait_until

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (Linux)")


def test_a_beat_whose_worker_died_before_it_armed_does_not_live_on(tmp_path: Path) -> None:
    survived = tmp_path / "survived"
    beat_pid = tmp_path / "beat-pid"
    worker = os.fork()
    if worker == 0:  # the worker: records its pid as worker_init does, forks its beat, dies
        try:
            worker_setup._worker_pid = os.getpid()
            if os.fork() == 0:  # the beat: arms only once its worker is gone
                beat_pid.write_text(str(os.getpid()))
                deadline = time.monotonic() + 10
                while os.getppid() == worker_setup._worker_pid and time.monotonic() < deadline:
                    time.sleep(0.01)
                worker_setup._die_with_the_worker()
                survived.write_text("armed against whoever adopted it")
            os._exit(0)
        finally:
            os._exit(1)
    _, status = os.waitpid(worker, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    wait_until(beat_pid.exists, 10, "the beat started")
    pid = int(beat_pid.read_text())

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped
        except psutil.NoSuchProcess:
            return True

    wait_until(gone, 15, "the orphaned beat gone")
    assert not survived.exists()
