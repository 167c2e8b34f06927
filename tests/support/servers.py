"""Start and stop real server processes (Bento, Celery) for integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout}s:\n{log.read_text()[-4000:]}")


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


@contextlib.contextmanager
def bento_server(env: dict[str, str], log: Path, timeout: float = 180) -> Iterator[str]:
    """Run ``bentoml serve service:VisionQueue`` on a free loopback port; yield its URL.

    Each server gets a BentoML home of its own (sharing the model store), so servers
    running side by side keep their metrics apart.
    """
    port = free_port()
    shared = Path(env.get("BENTOML_HOME") or os.environ["BENTOML_HOME"])
    home = isolated_bentoml_home(shared, log.parent / f"bentoml-home-{port}")
    full_env = {
        **os.environ,
        **env,
        "VQ_PORT": str(port),
        "VQ_HOST": "127.0.0.1",
        "BENTOML_HOME": str(home),
    }
    proc = spawn(
        [
            str(BIN / "bentoml"),
            "serve",
            "service:VisionQueue",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        full_env,
        log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/readyz", proc, timeout, log)
        yield url
    finally:
        stop(proc)
