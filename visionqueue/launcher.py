"""``make run`` / ``visionqueue serve``: import the model, migrate, start every process.

Starts the Bento server (front + classifier), a Celery worker and Flower as child
process groups on the configured backends (the embedded default when none are set),
waits for ``/readyz`` and stops them all promptly on Ctrl-C or when one dies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from visionqueue.core.settings import Settings, get_settings

logger = logging.getLogger("visionqueue.launcher")
BIN = Path(sys.executable).parent
BANNER = "=" * 78


@dataclass
class Child:
    name: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def say(message: str) -> None:
    print(f"[visionqueue] {message}", flush=True)


def prepare_model(settings: Settings) -> tuple[str, str]:
    """Return (tag, weights origin) of the model to serve, importing it when missing.

    The import runs in a child process so this long-lived supervisor never loads torch.
    """
    from model_store.weights import IMAGENET, is_demo

    cfg = settings.model
    say(f"model: ensuring {cfg.model_name} with weights={cfg.weights} in the BentoML store")
    args = [sys.executable, "-m", "model_store", "import", "--if-missing", "--json"]
    args += ["--weights", cfg.weights, "--seed", str(cfg.random_seed), "--name", cfg.model_name]
    if cfg.weights == IMAGENET:
        args.append("--fallback-random")
    done = subprocess.run(args, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"[visionqueue] model import failed (exit {done.returncode})")
    stored = json.loads(done.stdout.strip().splitlines()[-1])
    tag, origin = str(stored["tag"]), str(stored["weights"])
    if is_demo(origin):
        print(
            f"\n{BANNER}\n  WARNING: serving {origin} — an UNTRAINED demo model.\n"
            "  Its predictions are meaningless. Every response and /readyz say so.\n"
            "  For real predictions set VQ_WEIGHTS=imagenet1k_v1 (needs network once)\n"
            f"  or VQ_WEIGHTS=/path/to/resnet18_checkpoint.pt\n{BANNER}\n",
            flush=True,
        )
    return tag, origin


def prepare_storage(settings: Settings) -> None:
    """Create the embedded default's folders and apply database migrations."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from jobs.celery_app import ensure_broker_dirs

    ensure_broker_dirs(settings)
    try:
        from persistence.migrate import upgrade_database
    except ImportError:  # the async layer is optional for the sync API
        return
    say("database: applying migrations")
    upgrade_database(settings.database_url)


def worker_queues(settings: Settings) -> str:
    """Return the worker's ``-Q`` argument: the job and webhook queues, prefixed."""
    prefix = settings.broker.queue_prefix
    return f"{prefix}visionqueue,{prefix}webhooks"


def flower_host(settings: Settings) -> str:
    """Return Flower's bind address: ``VQ_HOST`` behind ``FLOWER_BASIC_AUTH``, else loopback."""
    # Flower reads FLOWER_BASIC_AUTH ("user:password,...") itself; without it its API, which
    # can shut workers down, must not be reachable from other machines.
    return settings.server.host if os.environ.get("FLOWER_BASIC_AUTH") else "127.0.0.1"


def children(settings: Settings, with_worker: bool) -> list[Child]:
    server = settings.server
    bento = [str(BIN / "bentoml"), "serve", "service:VisionQueue"]
    bento += ["--host", server.host, "--port", str(server.port)]
    procs = [Child("bento", bento)]
    if not with_worker:
        return procs
    celery = [str(BIN / "celery"), "-A", "jobs.celery_app:app"]
    worker = [*celery, "worker", "--pool", "threads"]
    worker += ["--concurrency", str(settings.worker.concurrency), "-Q", worker_queues(settings)]
    worker += ["--loglevel", settings.observability.log_level, "--without-gossip"]
    # embedded beat runs the sweeper (lost enqueues, due webhook retries); with several
    # workers run one separate `celery beat` instead (see docker-compose.yml)
    worker += ["--beat", "--schedule", str(settings.data_dir.resolve() / "celerybeat-schedule")]
    procs.append(Child("worker", worker))
    if settings.observability.flower_port:
        flower = [*celery, "flower", f"--address={flower_host(settings)}"]
        flower += [f"--port={settings.observability.flower_port}"]
        procs.append(Child("flower", flower))
    return procs


def stop_all(procs: list[Child], grace: float = 10.0) -> None:
    """SIGTERM every child group, SIGKILL what is left after ``grace`` seconds.

    ``bentoml serve`` starts its service workers in sessions of their own, so a group
    signal misses them: the process trees are recorded first and survivors killed last.
    """
    import psutil

    running = [c for c in procs if c.proc and c.proc.poll() is None]
    trees: list[psutil.Process] = []
    for child in running:
        with contextlib.suppress(psutil.Error):
            trees += psutil.Process(child.proc.pid).children(recursive=True)  # type: ignore[union-attr]
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
    deadline = time.monotonic() + grace
    for child in running:
        assert child.proc is not None
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            child.proc.wait(5)
    _, alive = psutil.wait_procs(trees, timeout=max(0.1, deadline - time.monotonic()))
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def wait_ready(
    url: str, procs: list[Child], stopping: Callable[[], bool], timeout: float = 300
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping():
        if any(c.proc and c.proc.poll() is not None for c in procs):
            return False
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        time.sleep(0.5)
    return False


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("visionqueue").setLevel(logging.INFO)
    settings = get_settings()
    settings.check_secrets()
    tag, origin = prepare_model(settings)
    prepare_storage(settings)
    with_worker = (Path(__file__).resolve().parents[1] / "jobs" / "celery_app.py").exists()
    env = {**os.environ, "VQ_MODEL_TAG": tag, "BENTOML_DO_NOT_TRACK": "true"}
    # glibc's per-thread malloc arenas make threaded servers' RSS balloon under bursts
    env.setdefault("MALLOC_ARENA_MAX", "2")
    procs = children(settings, with_worker)

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    for child in procs:
        say(f"starting {child.name}: {' '.join(child.args[1:4])} ...")
        child.proc = subprocess.Popen(child.args, env=env, start_new_session=True)
    url = settings.public_url
    try:
        if not wait_ready(url + "/readyz", procs, lambda: stopping):
            if stopping:
                return 0
            say("start-up failed: a process exited or /readyz never answered; stopping")
            return 1
        print(
            f"\n{BANNER}\n  VisionQueue is up: {url}\n"
            f"  model {tag} (weights {origin})\n"
            f"  try: curl -F image=@photo.jpg {url}/predict\n"
            f"  docs: {url}/docs   metrics: {url}/metrics\n"
            + (
                f"  flower: http://{flower_host(settings)}:{settings.observability.flower_port}"
                + (" (basic auth)\n" if os.environ.get("FLOWER_BASIC_AUTH") else "\n")
                if with_worker and settings.observability.flower_port
                else ""
            )
            + ("  API keys: NONE — open on loopback only\n" if not settings.server.api_keys else "")
            + f"  Ctrl-C stops everything\n{BANNER}\n",
            flush=True,
        )
        while not stopping:
            dead = [c for c in procs if c.proc and c.proc.poll() is not None]
            if dead:
                say(f"{dead[0].name} exited with {dead[0].proc.returncode}; stopping")  # type: ignore[union-attr]
                return 1
            time.sleep(0.5)
        return 0
    finally:
        say("stopping ...")
        stop_all(procs)
        say("stopped")


if __name__ == "__main__":
    sys.exit(main())
