"""The production-shaped stack on loopback: Postgres, Redis, an S3 server, Bento, workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from persistence.models import Job
from tests.support.postgres import throwaway_postgres_url
from tests.support.servers import BIN, answers, bento_server, free_port, spawn, stop, wait_ready
from tests.support.waiting import wait_until

REDIS_URL = "redis://127.0.0.1:6379/{db}"


@dataclass(frozen=True)
class S3Server:
    """A running ``moto_server``: its URL and process (fault tests SIGSTOP it)."""

    url: str
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def s3_server_process(log: Path) -> Iterator[S3Server]:
    """Run ``moto_server`` (a real S3-protocol server) on a free loopback port."""
    port = free_port()
    proc = spawn(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], dict(os.environ), log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, 30, log, ready=answers)
        yield S3Server(url, proc)
    finally:
        stop(proc)


@dataclass
class Stack:
    """Handles on a running stack; ``env`` is what every process of it was started with."""

    url: str
    env: dict[str, str]
    database_url: str
    broker_url: str
    s3_endpoint: str
    log_dir: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    s3_process: subprocess.Popen[bytes] | None = None

    @property
    def queues(self) -> str:
        prefix = self.env.get("VQ_BROKER_QUEUE_PREFIX", "")
        return f"{prefix}visionqueue,{prefix}webhooks,{prefix}maintenance"

    def start_worker(
        self,
        concurrency: int = 8,
        name: str | None = None,
        beat: bool = False,
        queues: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a real ``celery worker`` process (with the sweeper if ``beat``); wait for it.

        ``queues`` (default: all three) sets it apart; ``env`` adds to (or overrides) the
        stack's env for this worker only.
        """
        name = name or f"w{len(self.workers)}-{uuid.uuid4().hex[:6]}"
        log = self.log_dir / f"worker-{name}.log"
        args = [
            str(BIN / "celery"), "-A", "jobs.celery_app:app", "worker", "--pool", "threads",
            "--concurrency", str(concurrency), "-Q", queues or self.queues, "-n", f"{name}@%h",
            "--loglevel", "INFO", "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        if beat:
            args += ["--beat", "--schedule", str(self.log_dir / f"beat-{name}")]
        proc = spawn(args, {**os.environ, **self.env, **(env or {})}, log)
        self.workers.append(proc)

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited: {log.read_text()[-3000:]}")
            return "ready." in log.read_text(errors="replace")

        try:
            wait_until(ready, 60, f"worker {name} ready")
        except TimeoutError:
            raise TimeoutError(f"worker not ready: {log.read_text()[-3000:]}") from None
        return proc

    @contextlib.contextmanager
    def worker(self, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
        """Run one worker (``start_worker``'s arguments) for the block; stop it after."""
        proc = self.start_worker(**kwargs)
        try:
            yield proc
        finally:
            self.stop_worker(proc)

    def stop_worker(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop one worker (SIGTERM, then SIGKILL) and forget it."""
        stop(proc)
        if proc in self.workers:
            self.workers.remove(proc)

    def kill_worker(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL a worker's whole process group (no graceful shutdown, no acks)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop_workers(self) -> None:
        for proc in self.workers:
            stop(proc)
        self.workers.clear()


class Stored:
    """What a stack has stored: job rows and S3 objects (the bucket the stack's env names)."""

    def __init__(self, stack: Stack) -> None:
        from minio import Minio

        self.stack = stack
        env = stack.env
        netloc = urlsplit(stack.s3_endpoint).netloc
        self.s3 = Minio(netloc, env["VQ_S3_ACCESS_KEY"], env["VQ_S3_SECRET_KEY"], secure=False)

    def job_count(self) -> int:
        engine = create_engine(self.stack.database_url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(Job)).scalar_one())
        finally:
            engine.dispose()

    def object_keys(self) -> set[str]:
        bucket = self.stack.env["VQ_S3_BUCKET"]
        return {str(o.object_name) for o in self.s3.list_objects(bucket, recursive=True)}

    def counts(self) -> tuple[int, int]:
        """Return (job rows, S3 objects)."""
        return self.job_count(), len(self.object_keys())


def backend_env(database_url: str, broker_url: str, s3_endpoint: str) -> dict[str, str]:
    """Return the VQ_* variables that point a process at these backends (test credentials)."""
    return {
        "VQ_DATABASE_URL": database_url,
        "VQ_BROKER_URL": broker_url,
        "VQ_S3_ENDPOINT": s3_endpoint,
        "VQ_S3_ACCESS_KEY": "vq-test-access",
        "VQ_S3_SECRET_KEY": "vq-test-secret",
        "VQ_S3_BUCKET": "vq-images",
        "VQ_BROKER_VISIBILITY_TIMEOUT_S": "15",
        # unique queues: test sessions running side by side never share messages
        "VQ_BROKER_QUEUE_PREFIX": f"t{uuid.uuid4().hex[:8]}-",
        "VQ_WORKER_METRICS_PORT": "0",
    }


def migrate(env: dict[str, str]) -> None:
    """Apply the migrations to the database ``env`` names, as ``make run`` does."""
    subprocess.run(
        [str(BIN / "python"), "-m", "persistence", "upgrade"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )


@contextlib.contextmanager
def serve_stack(env: dict[str, str], log_dir: Path, s3: S3Server) -> Iterator[Stack]:
    """Migrate, start a Bento server on ``env``'s backends; stop its workers at the end."""
    migrate(env)
    with bento_server(env, log_dir / "bento.log") as url:
        env["VQ_WORKER_CLASSIFIER_URL"] = url
        stack = Stack(
            url,
            env,
            env["VQ_DATABASE_URL"],
            env["VQ_BROKER_URL"],
            s3.url,
            log_dir,
            s3_process=s3.proc,
        )
        try:
            yield stack
        finally:
            stack.stop_workers()


@contextlib.contextmanager
def production_stack(
    base_env: dict[str, str], log_dir: Path, redis_db: int = 11, **extra_env: str
) -> Iterator[Stack]:
    """Start S3 server + Bento server against a throwaway Postgres DB and Redis.

    Workers are started by the test (``stack.start_worker()``) so it can kill them.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    broker = REDIS_URL.format(db=redis_db)
    with throwaway_postgres_url() as db_url, s3_server_process(log_dir / "s3.log") as s3:
        env = {
            **base_env,
            **backend_env(db_url, broker, s3.url),
            "VQ_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
            **extra_env,
        }
        prefix = env["VQ_BROKER_QUEUE_PREFIX"]
        try:
            with serve_stack(env, log_dir, s3) as stack:
                yield stack
        finally:
            client = redis.Redis.from_url(broker)
            for key in client.scan_iter(f"{prefix}*"):
                client.delete(key)
