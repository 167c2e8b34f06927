"""Fault injection on loopback: private Redis and Postgres servers to kill, a TCP proxy to open.

Killing the shared servers would break every other test on the machine, so the fault tests
run a side stack whose Redis, Postgres cluster and S3 server belong to them alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.support.prerequisites import require_binary
from tests.support.servers import free_port, spawn, stop
from tests.support.stack import Stack, backend_env, s3_server_process, serve_stack
from tests.support.waiting import wait_until


@contextlib.contextmanager
def paused(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """SIGSTOP a process group (it hangs: sockets stay open, nothing answers), then SIGCONT."""
    os.killpg(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(proc.pid, signal.SIGCONT)


class RedisServer:
    """A ``redis-server`` that keeps nothing on disk, so a restart loses every message."""

    def __init__(self, log: Path) -> None:
        self.binary = require_binary("redis-server", "Debian: apt-get install -y redis-server")
        self.port = free_port()
        self.log = log
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        self.proc = spawn(args, dict(os.environ), self.log)
        client = redis.Redis.from_url(self.url, socket_timeout=1)

        def answers() -> bool:
            with contextlib.suppress(redis.RedisError):
                return bool(client.ping())
            return False

        try:
            wait_until(answers, 15, f"redis-server on {self.port} answers", interval=0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server: a crash, with no chance to save anything."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


def _postgres_bin(name: str) -> str:
    """Return PostgreSQL's ``name`` server binary (Debian keeps them off PATH)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    how = "Debian: apt-get install -y postgresql"
    return require_binary(name, how, *(str(path) for path in candidates))


class PostgresCluster:
    """A throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``) on a free port, trust auth."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
        # not under pytest's tmp_path: the postgres user must be able to reach the folder
        self.dir = Path(tempfile.mkdtemp(prefix="vq-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            shutil.chown(self.dir, "postgres")
            self._as_postgres = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self._as_postgres, *args], check=True, capture_output=True, timeout=60, cwd=self.dir
        )

    def create(self) -> None:
        assert self.initdb is not None
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self) -> None:
        assert self.pg_ctl is not None
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        self._run(
            self.pg_ctl,
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            options,
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``immediate`` is a crash (recovery replays the WAL at start)."""
        assert self.pg_ctl is not None
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class TcpProxy:
    """Forward a loopback port to another, so a dead address can come to life mid-test."""

    def __init__(self, port: int, target_port: int) -> None:
        self.port, self.target_port = port, target_port
        self._listener = socket.create_server(("127.0.0.1", port))
        self._sockets: list[socket.socket] = [self._listener]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                return
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


@dataclass
class SideStack:
    """A production-shaped stack whose Redis, Postgres and S3 server a test may kill."""

    stack: Stack
    redis: RedisServer
    postgres: PostgresCluster
    s3: subprocess.Popen[bytes]


@contextlib.contextmanager
def side_stack(base_env: dict[str, str], log_dir: Path, **extra_env: str) -> Iterator[SideStack]:
    """Start Redis, a Postgres cluster, an S3 server and a Bento front of their own."""
    log_dir.mkdir(parents=True, exist_ok=True)
    redis_server = RedisServer(log_dir / "redis.log")
    postgres = PostgresCluster()
    try:
        redis_server.start()
        postgres.create()
        postgres.start()
        with s3_server_process(log_dir / "s3.log") as s3:
            env = {
                **base_env,
                **backend_env(postgres.url, redis_server.url, s3.url),
                **extra_env,
            }
            with serve_stack(env, log_dir, s3) as stack:
                yield SideStack(stack, redis_server, postgres, s3.proc)
    finally:
        redis_server.stop()
        postgres.remove()
