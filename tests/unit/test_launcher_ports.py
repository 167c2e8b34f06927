"""``make run`` refuses a taken port in one line naming the setting that moves it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.servers import ROOT, free_port
from visionqueue.core.settings import Settings
from visionqueue.launcher import port_problem


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("setting", ["VQ_PORT", "VQ_FLOWER_PORT", "VQ_WORKER_METRICS_PORT"])
def test_a_taken_port_names_its_setting_and_holder(
    monkeypatch: pytest.MonkeyPatch, taken_port: int, setting: str
) -> None:
    for name in ("VQ_PORT", "VQ_FLOWER_PORT", "VQ_WORKER_METRICS_PORT"):
        monkeypatch.setenv(name, str(free_port()))
    monkeypatch.setenv(setting, str(taken_port))
    problem = port_problem(Settings())
    assert problem is not None
    assert f"port {taken_port} on 127.0.0.1 is already in use by pid {os.getpid()}" in problem
    assert f"{setting}={taken_port + 1} make run" in problem


def test_free_ports_and_disabled_ones_pass(
    monkeypatch: pytest.MonkeyPatch, taken_port: int
) -> None:
    monkeypatch.setenv("VQ_PORT", str(free_port()))
    monkeypatch.setenv("VQ_FLOWER_PORT", "0")
    monkeypatch.setenv("VQ_WORKER_METRICS_PORT", "0")
    assert port_problem(Settings()) is None


def test_two_settings_on_one_port_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    port = str(free_port())
    monkeypatch.setenv("VQ_PORT", port)
    monkeypatch.setenv("VQ_FLOWER_PORT", port)
    assert (
        port_problem(Settings())
        == f"VQ_FLOWER_PORT and VQ_PORT are both {port}: give each its own port"
    )


def test_the_launcher_stops_before_starting_anything(taken_port: int, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "VQ_PORT": str(taken_port), "VQ_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        [sys.executable, "-m", "visionqueue.launcher"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"[visionqueue] port {taken_port} on 127.0.0.1 is already in use")
    assert "VQ_PORT=" in line
    assert not (tmp_path / "data").exists()  # no model import, no migration, no process
