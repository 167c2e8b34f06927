"""Run ``make run``'s launcher as scripts/run does, on a fresh data folder, and watch it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from tests.support.servers import ROOT, free_port
from tests.support.waiting import wait_until

BANNER = "VisionQueue is up"
BANNER_END = "Ctrl-C stops everything"


def started_by(data_dir: Path) -> list[psutil.Process]:
    """Return every live process started with ``VQ_DATA_DIR=data_dir`` (the launcher's tree)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("VQ_DATA_DIR") == str(
                data_dir
            ):
                found.append(proc)
    return found


def describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            out.append(f"{proc.pid} {' '.join(proc.cmdline()[:4])}")
    return out


class Launched:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, data_dir: Path, log: Path) -> None:
        self.proc, self.url, self.data_dir, self.log = proc, url, data_dir, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> list[psutil.Process]:
        return [p for p in started_by(self.data_dir) if p.pid != self.proc.pid]

    def wait_for_output(self, text: str, timeout: float = 240) -> None:
        def printed() -> bool:
            if text in self.output():
                return True
            if self.proc.poll() is not None:
                raise RuntimeError(f"launcher exited:\n{self.output()[-4000:]}")
            return False

        try:
            wait_until(printed, timeout, f"{text!r} printed")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}:\n{self.output()[-4000:]}") from None

    def interrupt_and_wait(self, timeout: float = 20) -> float:
        """Send Ctrl-C's SIGINT; return how long the launcher took to exit (code 0)."""
        os.killpg(self.proc.pid, signal.SIGINT)
        started = time.monotonic()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(
                f"launcher running {timeout}s after SIGINT:\n{self.output()[-3000:]}"
            ) from exc
        assert code == 0, self.output()[-3000:]
        return time.monotonic() - started

    def wait_all_gone(self, timeout: float = 5) -> None:
        """Fail unless every process of the stack has exited within ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not self.children(), timeout, "every process gone")
        assert not self.children(), describe(self.children())

    def kill_all(self) -> None:
        """SIGKILL whatever is left of the launcher's tree (only after a failure)."""
        for proc in started_by(self.data_dir):
            with contextlib.suppress(psutil.Error, OSError):
                os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def launcher_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The embedded default on free ports, the demo model, Flower and worker metrics off."""
    return {
        **os.environ,
        "VQ_PORT": str(free_port()),
        "VQ_DATA_DIR": str(data_dir),
        "VQ_WEIGHTS": "random",
        "VQ_FLOWER_PORT": "0",
        "VQ_WORKER_METRICS_PORT": "0",
        "VQ_WORKER_CONCURRENCY": "4",
        "BENTOML_HOME": os.environ["BENTOML_HOME"],
        "BENTOML_DO_NOT_TRACK": "true",
        **settings,
    }


@contextlib.contextmanager
def start_launcher(env: dict[str, str], log: Path) -> Iterator[Launched]:
    """Run ``python -m visionqueue.launcher`` (what scripts/run execs) with ``env``."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "visionqueue.launcher"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{env['VQ_PORT']}"
    launched = Launched(proc, url, Path(env["VQ_DATA_DIR"]), log)
    try:
        yield launched
    finally:
        launched.kill_all()
