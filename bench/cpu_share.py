"""Where the CPU goes while a benchmark phase runs: CPU time per part of the stack.

The stack's processes are those started with its ``VQ_DATA_DIR``, named by
``bench.lone.process_role``: the front (BentoML's worker serving the public routes, and its
arbiter), the classifier (BentoML's worker of the model service), the Celery worker; then the
S3 server, PostgreSQL and Redis found by name, and the benchmark's own process (its client
and its polling). ``other`` is what the host's CPUs spent beyond
them (other engineers' work, the kernel's threads). Sampled at the start and the end of a
window; a share is CPU seconds over wall seconds: 1.0 is one core busy all along.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

import psutil

from bench.lone import process_role

# the stack's parts, as bench.lone.process_role names them (BentoML's arbiter counts as the
# front), then the services and this benchmark
PARTS = (
    "front",
    "classifier",
    "celery worker",
    "S3 server (moto)",
    "postgres",
    "redis",
    "bench",
    "other",
)
SERVICES = ("S3 server (moto)", "postgres")


def part_of(proc: psutil.Process, data_dir: str) -> str | None:
    """The part of the stack ``proc`` belongs to, or None (not one of ours)."""
    if proc.pid == os.getpid():
        return "bench"
    if proc.name().startswith("redis-server"):
        return "redis"
    role = process_role(proc.cmdline())
    if role in SERVICES or proc.environ().get("VQ_DATA_DIR") == data_dir:
        return role if role in PARTS else None
    return None


def _host_busy() -> float:
    """CPU seconds the whole host has spent busy (every core, all but idle and iowait)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


@dataclass(frozen=True)
class Sample:
    at: float
    host: float
    procs: dict[int, tuple[str, float]]  # pid -> (part, CPU seconds so far)


def sample(data_dir: str) -> Sample:
    """The CPU seconds every process of the stack started with ``VQ_DATA_DIR=data_dir`` (and
    the services, and the host) has spent so far."""
    procs = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            part = part_of(proc, data_dir)
            if part is not None:
                times = proc.cpu_times()
                procs[proc.pid] = (part, times.user + times.system)
    return Sample(time.monotonic(), _host_busy(), procs)


def shares(start: Sample, end: Sample) -> dict[str, float]:
    """Each part's CPU over the window, in cores (a process started meanwhile counts from 0)."""
    seconds = max(end.at - start.at, 1e-9)
    used = dict.fromkeys(PARTS, 0.0)
    for pid, (part, cpu) in end.procs.items():
        before = start.procs.get(pid)
        used[part] += cpu - (before[1] if before and before[0] == part else 0.0)
    ours = sum(used.values())
    used["other"] = max(0.0, (end.host - start.host) - ours)
    return {part: cpu / seconds for part, cpu in used.items()}
