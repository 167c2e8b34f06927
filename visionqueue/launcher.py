"""``make run`` / ``visionqueue serve``: import the model, migrate, start every process.

Checks that its ports are free, then starts the Bento server (front + classifier) and a
Celery worker on the configured backends (the embedded default when none are set), Flower
once ``/readyz`` answers, and prints one banner. Ctrl-C, SIGTERM or a closed terminal stop
everything; so does the launcher's own death, even by SIGKILL: each child gets
``PR_SET_PDEATHSIG`` and a watchdog process (``visionqueue.watchdog``) stops their children.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import httpx

from visionqueue.core.logging_setup import RedactionFilter
from visionqueue.core.parent_death import die_with
from visionqueue.core.settings import Settings, get_settings
from visionqueue.watchdog import STACK_ENV

logger = logging.getLogger("visionqueue.launcher")
BIN = Path(sys.executable).parent
BANNER = "=" * 78
# Celery's multi-line warning on every start as root (a Python warning, so a warnings filter
# is its lever). The danger Celery's docs give is code execution through pickled messages;
# this app accepts JSON only, and were pickle ever accepted Celery would refuse to start as
# root outright, an error this filter leaves alone. Only `make run`'s worker gets the filter.
ROOT_WARNING_FILTER = "ignore:You're running the worker with superuser privileges"


@dataclass
class Child:
    name: str
    args: list[str]
    # started once /readyz answers (Flower asks the worker for its state when it starts)
    after_ready: bool = False
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def say(message: str, *, stream: TextIO | None = None) -> None:
    # a closed terminal (SIGHUP) must not stop the launcher before it stops its children
    with contextlib.suppress(OSError):
        print(f"[visionqueue] {message}", flush=True, file=stream or sys.stdout)


def port_settings(settings: Settings) -> list[tuple[str, str, int]]:
    """Return (setting, host, port) of every port ``make run`` listens on."""
    obs = settings.observability
    ports = [("VQ_PORT", settings.server.host, settings.server.port)]
    if obs.flower_port:
        ports.append(("VQ_FLOWER_PORT", flower_host(settings), obs.flower_port))
    if obs.worker_metrics_port:
        ports.append(("VQ_WORKER_METRICS_PORT", settings.server.host, obs.worker_metrics_port))
        # the webhook worker's metrics, on the next port
        ports.append(("VQ_WORKER_METRICS_PORT", settings.server.host, obs.worker_metrics_port + 1))
    return ports


def _holder(port: int) -> str:
    """Describe the local process listening on ``port``, when this user may see it."""
    import psutil

    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="inet"):
            listening = conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
            if listening and conn.pid:
                proc = psutil.Process(conn.pid)
                command = " ".join(proc.cmdline()[:3]) or proc.name()
                return f" by pid {conn.pid} ({command[:60]})"
    return ""


def port_problem(settings: Settings) -> str | None:
    """Return one line saying which port cannot be used and which setting moves it, or None."""
    seen: dict[int, str] = {}
    for setting, host, port in port_settings(settings):
        if port in seen:
            return f"{setting} and {seen[port]} are both {port}: give each its own port"
        seen[port] = setting
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            with socket.socket(family, kind, proto) as sock:
                # as the servers do: a port left in TIME_WAIT by a stopped run is free
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"port {port} on {host} is already in use{_holder(port)}: stop that process "
                    f"or move VisionQueue's port, e.g. {setting}={port + 1} make run"
                )
            reason = exc.strerror or str(exc)
            return f"cannot listen on {host}:{port} ({setting}): {reason}"
    return None


def prepare_model(settings: Settings) -> tuple[str, str]:
    """Return (tag, weights origin) of the model to serve, importing it when missing.

    The import runs in a child process so this long-lived supervisor never loads torch.
    """
    from model_store.weights import IMAGENET

    cfg = settings.model
    args = [sys.executable, "-m", "model_store", "import", "--if-missing", "--json"]
    args += ["--weights", cfg.weights, "--seed", str(cfg.random_seed), "--name", cfg.model_name]
    if cfg.weights == IMAGENET:
        args.append("--fallback-random")
    done = subprocess.run(args, stdout=subprocess.PIPE, text=True, preexec_fn=die_with(os.getpid()))
    if done.returncode != 0:
        raise SystemExit(f"[visionqueue] model import failed (exit {done.returncode})")
    stored = json.loads(done.stdout.strip().splitlines()[-1])
    return str(stored["tag"]), str(stored["weights"])


def prepare_storage(settings: Settings) -> None:
    """Create the embedded default's folders and apply database migrations."""
    from jobs.worker_setup import prepare_backends

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    prepare_backends(settings)


def describe_backends(settings: Settings) -> list[str]:
    """Return the database, broker and image-store lines of the start-up story."""
    hide = RedactionFilter().redact  # user:password@ in URLs
    if settings.database.url:
        database = hide(settings.database.url)
    else:
        database = f"SQLite {settings.database_url.removeprefix('sqlite:///')}"
    if settings.broker.url:
        broker = hide(settings.broker.url)
    else:
        broker = f"Celery filesystem broker in {settings.broker_dir}"
    if settings.s3.endpoint:
        images = f"S3 bucket {settings.s3.bucket} at {settings.s3.endpoint}"
    else:
        images = f"local folder {settings.images_dir}"
    return [f"database: {database} (migrations applied)", f"broker: {broker}", f"images: {images}"]


def worker_queues(settings: Settings) -> tuple[str, str]:
    """Return the ``-Q`` arguments of the two workers: jobs, and webhooks (both sweep)."""
    from jobs.celery_app import Queues

    queues = Queues.of(settings)
    return f"{queues.jobs},{queues.maintenance}", f"{queues.webhooks},{queues.maintenance}"


def flower_host(settings: Settings) -> str:
    """Return Flower's bind address: ``VQ_HOST`` behind ``FLOWER_BASIC_AUTH``, else loopback."""
    # Flower reads FLOWER_BASIC_AUTH ("user:password,...") itself; without it its API, which
    # can shut workers down, must not be reachable from other machines.
    return settings.server.host if os.environ.get("FLOWER_BASIC_AUTH") else "127.0.0.1"


def children(settings: Settings) -> list[Child]:
    """Return the processes of the stack, in start order."""
    server = settings.server
    bento = [str(BIN / "bentoml"), "serve", "service:VisionQueue"]
    bento += ["--host", server.host, "--port", str(server.port)]
    procs = [Child("bento", bento)]
    # --quiet: no ASCII-art banner (the launcher's story says what it would)
    celery = [str(BIN / "celery"), "-A", "jobs.celery_app:app", "--quiet"]
    job_queues, webhook_queues = worker_queues(settings)
    worker = [*celery, "worker", "--pool", "threads"]
    worker += ["--concurrency", str(settings.worker.concurrency), "-Q", job_queues]
    worker += ["--loglevel", settings.observability.log_level, "--without-gossip"]
    # embedded beat runs the sweeper (lost jobs, the webhook relay); with several workers
    # run one separate `celery beat` instead (see docker-compose.yml)
    worker += ["--beat", "--schedule", str(settings.data_dir.resolve() / "celerybeat-schedule")]
    warnings = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), ROOT_WARNING_FILTER]))
    procs.append(Child("worker", worker, env={"PYTHONWARNINGS": warnings}))
    # webhooks get a pool of their own: a receiver that never answers holds webhook
    # threads (at most VQ_WEBHOOK_MAX_IN_FLIGHT_PER_DESTINATION), never classification ones
    hooks = [*celery, "worker", "--pool", "threads", "-n", "webhooks@%h"]
    hooks += ["--concurrency", str(settings.webhook.concurrency), "-Q", webhook_queues]
    hooks += ["--loglevel", settings.observability.log_level, "--without-gossip"]
    # its metrics (webhook_*) on the next port: two servers cannot share one
    port = settings.observability.worker_metrics_port
    hooks_env = {"PYTHONWARNINGS": warnings, "VQ_WORKER_METRICS_PORT": str(port + 1 if port else 0)}
    procs.append(Child("webhooks", hooks, env=hooks_env))
    if settings.observability.flower_port:
        flower = [*celery, "flower", f"--address={flower_host(settings)}"]
        # warnings and errors only: its INFO lines repeat the banner and list every task
        flower += [f"--port={settings.observability.flower_port}", "--logging=warning"]
        procs.append(Child("flower", flower, after_ready=True))
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


def start(child: Child, env: dict[str, str]) -> None:
    child.proc = subprocess.Popen(
        child.args,
        env={**env, **child.env},
        start_new_session=True,  # Ctrl-C reaches the launcher only, which stops them in order
        preexec_fn=die_with(os.getpid()),
    )


def start_watchdog(stack_id: str) -> int:
    """Start ``visionqueue.watchdog``; return the pipe end whose closing sets it off."""
    read_end, write_end = os.pipe()
    subprocess.Popen(
        [sys.executable, "-m", "visionqueue.watchdog", str(read_end), stack_id],
        pass_fds=(read_end,),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    os.close(read_end)
    return write_end  # kept open (not inherited) until this process exits


def cli_path() -> str:
    """Return how to call the ``visionqueue`` command from here (it lives in the venv)."""
    path = BIN / "visionqueue"
    if not path.exists():
        return "visionqueue"
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def banner(settings: Settings, tag: str, origin: str, served: list[str] | None = None) -> str:
    from model_store.weights import is_demo

    url = settings.public_url
    lines = [f"VisionQueue is up: {url}"]
    if tag:
        lines.append(f"model {tag} (weights {origin})")
    if served:
        lines.append(f"models {', '.join(served)} (the first is the default; GET /v1/models)")
    if is_demo(origin):
        lines += [
            "WARNING: an UNTRAINED demo model; set VQ_WEIGHTS for real predictions:",
            "  VQ_WEIGHTS=imagenet1k_v1 (downloads once) or VQ_WEIGHTS=/path/to/resnet18.pt",
            "  (until then every response and /readyz say demo: true)",
        ]
    lines += [
        f"web page: {url}/ (try a model, watch jobs)",
        f"try: curl -F image=@photo.jpg {url}/predict",
        f"docs: {url}/docs   metrics: {url}/metrics",
    ]
    obs = settings.observability
    if obs.flower_port:
        auth = " (basic auth)" if os.environ.get("FLOWER_BASIC_AUTH") else ""
        lines.append(f"flower: http://{flower_host(settings)}:{obs.flower_port}{auth}")
    lines.append(f"CLI: {cli_path()} --help")
    if not settings.server.api_keys:
        lines.append("API keys: NONE: open on loopback only (set VQ_API_KEYS)")
    lines.append("Ctrl-C stops everything")
    return "\n".join([BANNER, *(f"  {line}" for line in lines), BANNER])


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("visionqueue").setLevel(logging.INFO)
    settings = get_settings()
    settings.check_secrets()
    if problem := port_problem(settings):
        say(problem, stream=sys.stderr)
        return 1
    served = [entry.split(":")[0] for entry in settings.model.models]
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    if served and settings.model.model_name not in served:
        # VQ_MODELS names imported models (visionqueue import-model): nothing to import here
        tag, origin = "", ""
        say(f"models: {', '.join(served)} (VQ_MODELS) from the BentoML model store")
    else:
        tag, origin = prepare_model(settings)
        env["VQ_MODEL_TAG"] = tag
        say(f"model: {tag} (weights {origin}) from the BentoML model store")
    prepare_storage(settings)
    for line in describe_backends(settings):
        say(line)
    stack_id = uuid.uuid4().hex
    start_watchdog(stack_id)
    env[STACK_ENV] = stack_id
    # glibc's per-thread malloc arenas make threaded servers' RSS balloon under bursts
    env.setdefault("MALLOC_ARENA_MAX", "2")
    procs = children(settings)

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)

    url = settings.public_url
    worker = settings.worker
    say(f"starting the Bento server (front + classifier) on {url}")
    say(f"starting the Celery worker ({worker.concurrency} threads, sweeper included)")
    say(f"starting the webhook worker ({settings.webhook.concurrency} threads)")
    for child in procs:
        if not child.after_ready:
            start(child, env)
    try:
        if not wait_ready(url + "/readyz", procs, lambda: stopping):
            if stopping:
                return 0
            say("start-up failed: a process exited or /readyz never answered; stopping")
            return 1
        for child in procs:
            if child.after_ready:
                start(child, env)
        with contextlib.suppress(OSError):
            print(f"\n{banner(settings, tag, origin, served)}\n", flush=True)
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
