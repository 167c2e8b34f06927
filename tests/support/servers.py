"""Start and stop real server processes (Bento, Celery) for integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


Probe = Callable[[str], bool]


def answers(url: str) -> bool:
    """The server answers HTTP at all (any status)."""
    httpx.get(url, timeout=2)
    return True


def readyz_ok(url: str) -> bool:
    """The server is ready: ``/readyz`` answers 200 (model loaded, every backend up)."""
    return httpx.get(f"{url}/readyz", timeout=5).status_code == 200


def model_loaded(url: str) -> bool:
    """The model answers and the backends were checked, up or not (a broken-backend test)."""
    checks = httpx.get(f"{url}/readyz", timeout=5).json().get("checks", {})
    return checks.get("model") == "ok" and "backends" not in checks


def answers_livez(url: str) -> bool:
    """The front process answers, whatever the classifier does (a broken-model test)."""
    return httpx.get(f"{url}/livez", timeout=2).status_code == 200


def wait_ready(
    url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path, ready: Probe = readyz_ok
) -> None:
    """Wait until ``ready(url)``; fail at once if the process exits."""

    def probe() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError, ValueError):
            return ready(url)
        return False

    try:
        wait_until(probe, timeout, f"{url} ready", interval=0.5)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}:\n{log.read_text(errors='replace')[-4000:]}") from None


def stop(proc: subprocess.Popen[bytes], grace: float = 15) -> None:
    """Stop a process tree: SIGTERM the group, SIGKILL whatever is left after ``grace``.

    bentoml's service workers run in sessions of their own: the tree is recorded first.
    """
    import psutil

    if proc.poll() is not None:
        return
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    _, alive = psutil.wait_procs(tree, timeout=5)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    fh = log.open("ab")
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )


def isolated_bentoml_home(shared: Path, home: Path) -> Path:
    """Make a BentoML home that shares ``shared``'s model store but nothing else.

    ``bentoml serve`` wipes ``$BENTOML_HOME/prometheus_multiproc_dir`` when it starts, so two
    servers on one home clobber (and mix) each other's metrics.
    """
    home.mkdir(parents=True, exist_ok=True)
    models = home / "models"
    if not models.exists():
        models.symlink_to(shared / "models", target_is_directory=True)
    return home


class BentoServer:
    """``bentoml serve`` on a loopback port, which a test may SIGKILL and start again there.

    Each server gets a BentoML home of its own (sharing the model store), so servers running
    side by side keep their metrics apart. ``service="service:Classifier"`` serves the
    classifier on its own (the front then reaches it through ``VQ_CLASSIFIER_URL``).
    """

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        *,
        timeout: float = 180,
        ready: Probe = readyz_ok,
        service: str = "service:VisionQueue",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log, self.timeout, self.ready, self.service = log, timeout, ready, service
        shared = Path(env.get("BENTOML_HOME") or os.environ["BENTOML_HOME"])
        home = isolated_bentoml_home(shared, log.parent / f"bentoml-home-{self.port}")
        self.env = {
            **os.environ,
            **env,
            "VQ_PORT": str(self.port),
            "VQ_HOST": "127.0.0.1",
            "BENTOML_HOME": str(home),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server (again, on the same port); return once ``ready(url)`` holds."""
        args = [str(BIN / "bentoml"), "serve", self.service]
        args += ["--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = spawn(args, self.env, self.log)
        wait_ready(self.url, self.proc, self.timeout, self.log, self.ready)

    def pause(self) -> None:
        """SIGSTOP every process of the server: its port still accepts, nothing answers."""
        self._signal_all(signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL every process of the server: a crash, with no shutdown and no clean-up.

        The tree is frozen first, so no process sees another die and acts on it.
        """
        import psutil

        tree = self._signal_all(signal.SIGSTOP, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
        psutil.wait_procs(tree, timeout=10)

    def _signal_all(self, *signums: int) -> list[Any]:
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            main = psutil.Process(self.proc.pid)
            tree = [main, *main.children(recursive=True)]
        except psutil.Error:
            return []
        for signum in signums:
            for process in tree:
                with contextlib.suppress(psutil.Error):
                    process.send_signal(signum)
        return tree

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@contextlib.contextmanager
def bento_server(
    env: dict[str, str],
    log: Path,
    timeout: float = 180,
    ready: Probe = readyz_ok,
    service: str = "service:VisionQueue",
) -> Iterator[str]:
    """Run ``bentoml serve service:VisionQueue`` (a ``BentoServer``) for the block; yield its URL.

    Yields once ``ready(url)`` holds: by default ``/readyz`` is 200; a test of a broken
    backend passes ``model_loaded``, one of a broken model ``answers_livez``.
    """
    server = BentoServer(env, log, timeout=timeout, ready=ready, service=service)
    try:
        server.start()
        yield server.url
    finally:
        server.stop()
