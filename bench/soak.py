"""``make soak``: the default stack under sustained load; errors, lost jobs, RSS growth.

Starts ``make run``'s launcher (embedded default) on a free port, warms up, then runs
``/predict`` at concurrency 64 for 60 s and 500 async jobs, sampling every process' RSS.
Writes docs/soak.md. Loopback only; bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from bench.__main__ import ROOT, machine, payloads
from bench.load import run_load, submit_jobs
from tests.support.servers import free_port


def rss_by_process(root: psutil.Process) -> dict[str, float]:
    """Return MiB of resident memory per named process of the stack."""
    out: dict[str, float] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            cmd = " ".join(proc.cmdline())
            mib = proc.memory_info().rss / 2**20
        except psutil.Error:
            continue
        if "--service-name classifier" in cmd:
            name = "classifier"
        elif "_bentoml_impl.worker.service" in cmd:
            name = "front"
        elif " worker" in cmd and "celery" in cmd:
            name = "celery worker"
        elif "flower" in cmd:
            name = "flower"
        elif "bentoml serve" in cmd or ("bentoml" in cmd and "serve" in cmd):
            name = "bento supervisor"
        elif "visionqueue.launcher" in cmd:
            name = "launcher"
        else:
            name = proc.name()
        out[name] = out.get(name, 0.0) + mib
    return out


def wait_jobs(url: str, ids: list[str], timeout: float) -> tuple[dict[str, int], float]:
    """Wait until no job is pending or processing; count how each of ``ids`` ended.

    Returns the counts and the ``time.monotonic()`` at which the queue was drained.

    Two listing requests a second while the jobs run (asking for each job's status every
    second would put hundreds of requests a second on the stack being measured).
    """
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < deadline:
            busy = [
                client.get(f"{url}/v1/jobs", params={"status": s, "limit": 1}).json()["jobs"]
                for s in ("pending", "processing")
            ]
            if not any(busy):
                break
            time.sleep(1)
        drained = time.monotonic()
        statuses = [client.get(f"{url}/task-status/{job_id}").json()["status"] for job_id in ids]
    counts = {s: statuses.count(s) for s in ("completed", "failed")}
    counts["lost_or_unfinished"] = len(ids) - counts["completed"] - counts["failed"]
    return counts, drained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--output", default=str(ROOT / "docs" / "soak.md"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vq-soak-"))
    port = free_port()
    env = {
        **os.environ,
        "VQ_PORT": str(port),
        "VQ_DATA_DIR": str(work / "data"),
        "VQ_WEIGHTS": os.environ.get("VQ_WEIGHTS", "random"),
        "VQ_FLOWER_PORT": str(free_port()),
        "VQ_WORKER_METRICS_PORT": str(free_port()),
    }
    log = (work / "launcher.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "visionqueue.launcher"], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        data = payloads()
        root = psutil.Process(proc.pid)
        run_load(url, data, args.concurrency, 20)  # warm-up at the soak's own concurrency
        asyncio.run(submit_jobs(url, data, 50))
        time.sleep(10)
        warm = rss_by_process(root)
        load = run_load(url, data, args.concurrency, args.seconds)
        t0 = time.monotonic()
        ids = asyncio.run(submit_jobs(url, data, args.jobs))
        jobs, drained = wait_jobs(url, ids, timeout=900)
        jobs_s = drained - t0
        end = rss_by_process(root)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [
        "# Soak",
        "",
        f"`make soak` on {time.strftime('%Y-%m-%d')}: {machine()}. The default stack (`make run`: Bento "
        "front + classifier, Celery worker with the sweeper, Flower; SQLite, local images, "
        "filesystem broker), after a warm-up.",
        "",
        f"- `/predict` at concurrency {args.concurrency} for {args.seconds:.0f} s: {load.requests} "
        f"requests, **{load.errors} errors**, {load.per_s:.1f} req/s, p50 {load.p50_ms:.0f} ms, "
        f"p99 {load.p99_ms:.0f} ms.",
        f"- {args.jobs} async jobs: {jobs['completed']} completed, {jobs['failed']} failed, "
        f"**{jobs['lost_or_unfinished']} lost or unfinished**, in {jobs_s:.0f} s.",
        "",
        "| process | RSS after warm-up (MiB) | RSS at the end (MiB) | growth |",
        "|---|---|---|---|",
    ]
    for name in sorted(set(warm) | set(end)):
        a, b = warm.get(name, 0.0), end.get(name, 0.0)
        growth = f"{(b - a) / a * 100:+.1f}%" if a else "new"
        lines.append(f"| {name} | {a:.0f} | {b:.0f} | {growth} |")
    total_a, total_b = sum(warm.values()), sum(end.values())
    lines.append(
        f"| **whole stack** | **{total_a:.0f}** | **{total_b:.0f}** | "
        f"**{(total_b - total_a) / total_a * 100:+.1f}%** |"
    )
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if load.errors == 0 and jobs["lost_or_unfinished"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
