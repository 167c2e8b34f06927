"""``make run``'s launcher: a quiet start-up that ends with the banner, no orphans after SIGKILL."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.launcher import BANNER, BANNER_END, describe, launcher_env, start_launcher
from tests.support.servers import free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # each test starts the whole stack
WARNING_LINE = re.compile(r"warn|error|traceback|\[W ", re.IGNORECASE)


def full_stack_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """``make run``'s processes, all of them: Flower and the worker's metrics port on too."""
    ports = {"VQ_FLOWER_PORT": str(free_port()), "VQ_WORKER_METRICS_PORT": str(free_port())}
    return launcher_env(data_dir, **ports, **extra)


def test_start_up_is_a_short_story_that_ends_with_the_banner(
    tmp_path: Path, stored_model: Any
) -> None:
    env = full_stack_env(tmp_path / "data", VQ_WORKER_SWEEP_INTERVAL_S="1")
    with start_launcher(env, tmp_path / "launcher.log") as launched:
        launched.wait_for_output(BANNER_END)
        time.sleep(6)  # several sweeps, Flower's first look at the worker
        out = launched.output()
        launched.interrupt_and_wait()
        launched.wait_all_gone()

    story = [
        "[visionqueue] model: resnet18:",
        "[visionqueue] database: SQLite ",
        "[visionqueue] broker: Celery filesystem broker in ",
        "[visionqueue] starting the Bento server",
        BANNER,
    ]
    positions = [out.find(step) for step in story]
    assert -1 not in positions and positions == sorted(positions), (positions, out)
    banner = out[out.index(BANNER) : out.index(BANNER_END)]
    url = launched.url
    for shown in (url, f"{url}/docs", "demo model; set VQ_WEIGHTS", ".venv/bin/visionqueue"):
        assert shown in banner, banner
    # the banner is the last thing printed: housekeeping and Flower said nothing after it
    after = out.split(BANNER_END, 1)[1].split("[visionqueue] stopping")[0]
    assert after.strip(" =\n") == "", after
    # every warning says what to set (the demo model's name VQ_WEIGHTS); none is noise
    warnings = [line for line in out.splitlines() if WARNING_LINE.search(line)]
    assert all("VQ_" in line for line in warnings), warnings
    for noise in ("No hostname was supplied", "superuser", "visionqueue.sweep", "Registered tasks"):
        assert noise not in out, noise


def test_sigkill_of_the_launcher_stops_the_whole_stack_and_the_next_start_is_clean(
    tmp_path: Path, stored_model: Any
) -> None:
    env = full_stack_env(tmp_path / "data")
    with start_launcher(env, tmp_path / "first.log") as first:
        first.wait_for_output(BANNER_END)
        stack = first.children()
        # Bento's service workers and Celery's beat are the launcher's grandchildren
        assert any(p.ppid() != first.proc.pid for p in stack), describe(stack)
        os.kill(first.proc.pid, signal.SIGKILL)  # an OOM kill, `kill -9`
        first.proc.wait(10)
        first.wait_all_gone(timeout=30)
    assert "the launcher is gone; stopped" in first.output()

    with start_launcher(env, tmp_path / "second.log") as second:  # same ports, same data
        second.wait_for_output(BANNER_END)
        assert httpx.get(f"{second.url}/readyz", timeout=10).status_code == 200
        flower = f"http://127.0.0.1:{env['VQ_FLOWER_PORT']}/healthcheck"

        def flower_up() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(flower, timeout=5).status_code == 200
            return False

        wait_until(flower_up, 30, "Flower answers /healthcheck", interval=0.5)
        second.interrupt_and_wait()
        second.wait_all_gone()
    assert "in use" not in second.output()
