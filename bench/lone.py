"""A lone job at light load: submit -> completed, against sync ``/predict`` at c=1.

The issue's latency target: one job every ``interval`` seconds completes within sync
``/predict``'s p50 at concurrency 1 plus 150 ms. Latency is the job's own timestamps
(``finished_at - created_at``, written by the front and the worker), so the client's
polling adds nothing. CPU per job is read from ``/proc`` for each process of the stack.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import datetime

import httpx
import psutil

from bench.load import unique_jpeg


@dataclass(frozen=True)
class LoneResult:
    predict_p50_ms: float
    job_p50_ms: float
    job_p90_ms: float
    jobs: int
    pickup_p50_ms: float = float("nan")  # submit -> claimed by a worker (the broker's share)

    @property
    def met(self) -> bool:
        return self.job_p50_ms <= self.predict_p50_ms + 150


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def predict_p50_ms(url: str, payloads: list[bytes], requests: int = 20) -> float:
    """Median of ``requests`` sequential ``/predict`` calls (c=1)."""
    times = []
    with httpx.Client(timeout=60) as client:
        for i in range(requests):
            t0 = time.perf_counter()
            resp = client.post(f"{url}/predict", files={"image": ("img", payloads[i % 4])})
            resp.raise_for_status()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def lone_job_times(
    url: str, payloads: list[bytes], jobs: int = 10, interval: float = 2.0, first: int = 0
) -> tuple[list[float], list[float]]:
    """Submit one job every ``interval`` s; return (submit -> completed, submit -> claimed) ms."""
    latencies, pickups = [], []
    with httpx.Client(timeout=60) as client:
        for n in range(first, first + jobs):
            started = time.monotonic()
            data = unique_jpeg(payloads[n % len(payloads)], 10_000_000 + n)
            resp = client.post(f"{url}/v1/jobs", files={"images": ("img.jpg", data)})
            resp.raise_for_status()
            job_id = resp.json()["jobs"][0]["id"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                job = client.get(f"{url}/v1/jobs/{job_id}").json()
                if job["status"] in ("completed", "failed"):
                    break
                time.sleep(0.02)
            if job["status"] != "completed":
                raise RuntimeError(f"job {job_id}: {job['status']} {job.get('error')}")
            created = _ts(job["created_at"])
            latencies.append((_ts(job["finished_at"]) - created).total_seconds() * 1000)
            pickups.append((_ts(job["started_at"]) - created).total_seconds() * 1000)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    return latencies, pickups


def measure_lone(
    url: str, payloads: list[bytes], jobs: int = 10, interval: float = 2.0
) -> LoneResult:
    """Sync c=1 p50, then ``jobs`` lone jobs; the first job warms the worker and is dropped."""
    lone_job_times(url, payloads, 1, 0.5, first=jobs)
    predict = predict_p50_ms(url, payloads)
    times, pickups = lone_job_times(url, payloads, jobs, interval)
    times.sort()
    return LoneResult(
        predict,
        statistics.median(times),
        times[min(len(times) - 1, int(0.9 * len(times)))],
        jobs,
        statistics.median(pickups),
    )


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """User + system CPU seconds so far of each named group of processes (and their threads)."""
    out = {}
    for name, group in pids.items():
        total = 0.0
        for pid in group:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        out[name] = total
    return out


def process_role(cmdline: list[str]) -> str:
    """Name a stack process by what it runs (the per-process CPU table's rows)."""
    line = " ".join(cmdline)
    if "celery" in line:
        if "webhooks@" in line:
            return "webhook worker"
        return "flower" if " flower" in line else "celery worker"
    if "moto_server" in line or "ThreadedMotoServer" in line:
        return "S3 server (moto)"
    if "postgres" in line:
        return "postgres"
    if "visionqueue.dataplane.lane_process" in cmdline:  # the classifier's job passes
        return "classifier"
    if "--service-name" in cmdline[:-1]:  # one of BentoML's service workers
        name = cmdline[cmdline.index("--service-name") + 1]
        return "classifier" if name.lower() == "classifier" else "front"
    if "service:Classifier" in line:  # served on its own (VQ_CLASSIFIER_URL)
        return "classifier"
    if "bentoml" in line or "service:VisionQueue" in line or "_bentoml" in line:
        return "front"
    return cmdline[0].rsplit("/", 1)[-1] if cmdline else "?"


def stack_processes(
    data_dir: str, extra: dict[str, list[int]] | None = None
) -> dict[str, list[int]]:
    """Group every live process started with ``VQ_DATA_DIR=data_dir`` by role."""
    groups: dict[str, list[int]] = {k: list(v) for k, v in (extra or {}).items()}
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("VQ_DATA_DIR") != data_dir:
                continue
            role = process_role(proc.cmdline())
        except psutil.Error:
            continue
        if role.startswith("python"):
            line = " ".join(proc.cmdline())
            role = "launcher" if "launcher" in line else "watchdog" if "watchdog" in line else role
        groups.setdefault(role, []).append(proc.pid)
    return groups


def cpu_ms_per_job(
    before: dict[str, float], after: dict[str, float], jobs: int
) -> dict[str, float]:
    """Milliseconds of CPU per job of each process group between two ``cpu_seconds`` readings."""
    return {k: (after[k] - before.get(k, 0.0)) / jobs * 1000 for k in after}
