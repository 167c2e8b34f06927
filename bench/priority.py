"""Interactive first (issue 26): ``/predict`` at a Poisson rate while a job backlog drains.

On the server stack (PostgreSQL, Redis, an S3 server, a Celery worker): the same open-loop
``/predict`` traffic (Poisson arrivals, ``--rate`` per second) idle and while ``--jobs`` queued
jobs (``/v1/jobs``, ``--per-request`` images each) drain; and the backlog drained alone.
Reports p50/p99 under the backlog over idle, and the drain rate beside the traffic over the
solo one, measured in one run, and where a request's time went (decode, round trip, forward
pass: each answer's ``Server-Timing``). Writes ``docs/benchmarks-priority.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import cpu_share
from bench.load import percentile, submit_jobs

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Traffic:
    """Open-loop ``/predict`` latencies over one window (or several, ``pooled``)."""

    # every request's latency in seconds, answered or not
    latencies_s: tuple[float, ...]
    errors: int
    classes: tuple[str, ...]
    # each answered request's latency (s) and Server-Timing parts (ms)
    answered: tuple[tuple[float, dict[str, float]], ...]

    @property
    def sent(self) -> int:
        return len(self.latencies_s)

    @property
    def parts(self) -> dict[str, tuple[float, float]]:
        """Each Server-Timing part (decode, classify, forward): its p50 and p90 in ms."""
        timings = [t for _, t in self.answered]
        return {
            name: (
                percentile([t[name] for t in timings if name in t], 0.5),
                percentile([t[name] for t in timings if name in t], 0.9),
            )
            for name in sorted({n for t in timings for n in t})
        }

    @property
    def tail(self) -> dict[str, float]:
        """The slowest 1% of answered requests: their mean latency and each part's, in ms."""
        return slowest(list(self.answered))

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_s) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(list(self.latencies_s), 0.99) * 1000


def slowest(
    answered: list[tuple[float, dict[str, float]]], share: float = 0.01
) -> dict[str, float]:
    """The mean of each ``Server-Timing`` part over the slowest ``share`` of ``answered``
    (latency in seconds, parts in ms), with their mean latency as ``total`` and what no part
    covers (HTTP, the front's event loop, the client) as ``rest``: where a tail's time went."""
    if not answered:
        return {}
    worst = sorted(answered, key=lambda a: a[0], reverse=True)[
        : max(1, round(len(answered) * share))
    ]
    out = {"total": statistics.fmean(a[0] * 1000 for a in worst)}
    for name in sorted({n for _, t in worst for n in t}):
        out[name] = statistics.fmean(t.get(name, 0.0) for _, t in worst)
    out["rest"] = out["total"] - out.get("decode", 0.0) - out.get("classify", 0.0)
    return out


def ratio_interval(
    idle: Sequence[float], busy: Sequence[float], q: float, rounds: int = 2000
) -> tuple[float, float]:
    """A 95% bootstrap interval for the ``q`` percentile of ``busy`` over that of ``idle``.

    How far the ratio could move with another sample of the same traffic on the same host: a
    p99 of ~500 requests is their five slowest. It does not cover the host changing between
    the two windows (another tenant's load), which moves it further.
    """
    if not idle or not busy:
        return float("nan"), float("nan")
    rng = random.Random(26)
    ratios = sorted(
        percentile(rng.choices(busy, k=len(busy)), q)
        / percentile(rng.choices(idle, k=len(idle)), q)
        for _ in range(rounds)
    )
    return ratios[int(0.025 * rounds)], ratios[int(0.975 * rounds) - 1]


def server_timing(header: str) -> dict[str, float]:
    """``/predict``'s ``Server-Timing`` header as {part: milliseconds}."""
    out = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, *params = part.split(";")
        for param in params:
            if param.startswith("dur="):
                out[name] = float(param[4:])
    return out


async def _poisson(url: str, payloads: list[bytes], rate: float, stop: threading.Event) -> Traffic:
    rng = random.Random(26)
    latencies: list[float] = []
    # each answered request's latency (s) and Server-Timing parts (ms)
    answered: list[tuple[float, dict[str, float]]] = []
    classes: set[str] = set()
    errors = 0
    tasks: list[asyncio.Task[None]] = []
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as client:

        async def one(i: int) -> None:
            nonlocal errors
            t0 = time.perf_counter()
            timing: dict[str, float] | None = None
            try:
                data = payloads[i % len(payloads)]
                resp = await client.post(f"{url}/predict", files={"image": ("img", data)})
                if resp.status_code == 200:
                    classes.add(str(resp.json().get("work_class")))
                    timing = server_timing(resp.headers.get("Server-Timing", ""))
                else:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - t0)
            if timing is not None:
                answered.append((latencies[-1], timing))

        i = 0
        while not stop.is_set():
            tasks.append(asyncio.create_task(one(i)))
            i += 1
            await asyncio.sleep(rng.expovariate(rate))  # arrivals do not wait for answers
        await asyncio.gather(*tasks)
    return Traffic(tuple(latencies), errors, tuple(sorted(classes)), tuple(answered))


def pooled(windows: Sequence[Traffic]) -> Traffic:
    """One ``Traffic`` of every request of ``windows`` (the rounds of one run)."""
    return Traffic(
        tuple(x for w in windows for x in w.latencies_s),
        sum(w.errors for w in windows),
        tuple(sorted({c for w in windows for c in w.classes})),
        tuple(a for w in windows for a in w.answered),
    )


def traffic_for(url: str, payloads: list[bytes], rate: float, seconds: float) -> Traffic:
    stop = threading.Event()
    threading.Timer(seconds, stop.set).start()
    return asyncio.run(_poisson(url, payloads, rate, stop))


def drain(
    stack: Any,
    payloads: list[bytes],
    jobs: int,
    per_request: int,
    rate: float = 0.0,
    priority: str = "normal",
) -> tuple[float, Traffic | None, dict[str, float]]:
    """Queue ``jobs`` jobs with the worker stopped, start it, time the drain (with traffic).

    Returns jobs per second from the worker's start to the last completion, the traffic's
    latencies over the drain, and where the CPU went meanwhile (``bench.cpu_share``).
    """
    from sqlalchemy import create_engine, text

    engine = create_engine(stack.database_url)
    # a cheap count (not an IN list of every id) while /predict is measured: earlier drains
    # have ended before this one is queued, so the jobs still to finish are exactly these
    query = text("SELECT count(*) FROM jobs WHERE status IN ('completed','failed')")
    with engine.connect() as conn:
        target = jobs + conn.execute(query).scalar_one()
    asyncio.run(submit_jobs(stack.url, payloads, jobs, per_request, priority=priority))
    stop = threading.Event()
    box: list[Traffic] = []
    sender = threading.Thread(
        target=lambda: box.append(asyncio.run(_poisson(stack.url, payloads, rate, stop)))
    )
    worker = stack.start_worker(concurrency=16)
    started = time.monotonic()
    cpu_start = cpu_share.sample(stack.env["VQ_DATA_DIR"])
    if rate:
        sender.start()
    try:
        while time.monotonic() - started < 1800:
            with engine.connect() as conn:
                if conn.execute(query).scalar_one() >= target:
                    break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        cpu = cpu_share.shares(cpu_start, cpu_share.sample(stack.env["VQ_DATA_DIR"]))
    finally:
        stop.set()
        if rate:
            sender.join()
        stack.stop_worker(worker)
        engine.dispose()
    return jobs / elapsed, (box[0] if box else None), cpu


def batch_drain(
    stack: Any, payloads: list[bytes], source: str, images: int, rate: float = 0.0
) -> tuple[float, Traffic | None, dict[str, float]]:
    """Run one dataset batch over ``source`` (``images`` objects) with a worker started for
    it, with ``/predict`` traffic meanwhile; return its images per second, the traffic and
    where the CPU went."""
    from bench.batches import run_batch

    stop = threading.Event()
    box: list[Traffic] = []
    sender = threading.Thread(
        target=lambda: box.append(asyncio.run(_poisson(stack.url, payloads, rate, stop)))
    )
    worker = stack.start_worker(concurrency=6)
    cpu_start = cpu_share.sample(stack.env["VQ_DATA_DIR"])
    if rate:
        sender.start()
    try:
        result = run_batch(stack.url, source, {}, 1800)
        cpu = cpu_share.shares(cpu_start, cpu_share.sample(stack.env["VQ_DATA_DIR"]))
    finally:
        stop.set()
        if rate:
            sender.join()
        stack.stop_worker(worker)
    assert result["images"] == images and not result["failed"], result
    return float(result["images_per_s"]), (box[0] if box else None), cpu


def upload_dataset(stack: Any, images: int) -> str:
    """Put ``images`` real photos under a prefix of the stack's S3 server; return its URI."""
    import io

    from minio import Minio

    from bench.batches import photos

    s3 = Minio(stack.s3_endpoint.removeprefix("http://"), "vq-test-access",
               "vq-test-secret", secure=False, region="us-east-1")  # fmt: skip
    s3.make_bucket("dataset")
    for i, body in enumerate(photos(images)):
        s3.put_object("dataset", f"photos/{i:05d}.jpg", io.BytesIO(body), len(body))
    return "s3://dataset/photos/"


@dataclass(frozen=True)
class Round:
    """One round of a run: an idle window, the backlog alone, the backlog beside traffic."""

    idle: Traffic
    busy: Traffic
    solo: float  # the backlog's rate alone, jobs or images per second
    shared: float  # its rate beside the traffic
    solo_cpu: dict[str, float]
    shared_cpu: dict[str, float]

    @property
    def ratios(self) -> tuple[float, float, float]:
        """p50 and p99 beside the backlog over idle, and the drain beside over alone."""
        idle, busy = self.idle, self.busy
        return busy.p50_ms / idle.p50_ms, busy.p99_ms / idle.p99_ms, self.shared / self.solo


def mean_shares(samples: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each part's mean CPU share over the rounds."""
    return {p: statistics.fmean(s.get(p, 0.0) for s in samples) for p in cpu_share.PARTS}


PARTS = {
    "decode": "decode and crop (front)",
    "classify": "round trip to the classifier",
    "forward": "its forward pass",
}


def render(result: dict[str, Any]) -> str:
    idle, busy = result["idle"], result["busy"]
    rows = [
        "# Interactive first: /predict while a job backlog drains (issue 26)",
        "",
        f"Generated by `python -m bench.priority` ({result['when']}); {result['machine']}. "
        f"Load average {result['load_start']:.1f} at the start, {result['load_end']:.1f} at the "
        "end (other engineers' work shares these cores: compare the ratios, measured in one run, "
        "not the absolute figures). Server stack: PostgreSQL, Redis, moto's S3 server, one "
        "`bentoml serve` (random-init ResNet18, seeded: the weights' origin is "
        "`random-init-seed-0`), one Celery worker (concurrency 16).",
        "",
        f"`/predict` traffic: open loop, Poisson arrivals at {result['rate']:g}/s, the four "
        "benchmark photos. Backlog: "
        + (
            f"{result['jobs']} jobs queued before the worker starts, {result['per_request']} "
            f"images per `/v1/jobs` request, priority `{result['priority']}`."
            if result["backlog"] == "jobs"
            else f"one dataset batch (`POST /v1/batches`) over {result['jobs']} real photos "
            "under an `s3://` prefix of the S3 server (the bulk class), one worker "
            "(concurrency 6)."
        ),
        "",
        *(
            [
                f"{len(result['rounds'])} rounds on one stack, each an idle window, the "
                "backlog alone and the backlog beside the traffic: the figures below pool "
                "every round's requests (and the drain rates their work over their time).",
                "",
            ]
            if len(result["rounds"]) > 1
            else []
        ),
        "| | p50 ms | p99 ms | requests (errors) | classes answered |",
        "|---|---|---|---|---|",
        f"| idle | {idle.p50_ms:.0f} | {idle.p99_ms:.0f} | {idle.sent} ({idle.errors}) | "
        f"{', '.join(idle.classes)} |",
        f"| while the backlog drains | {busy.p50_ms:.0f} | {busy.p99_ms:.0f} | "
        f"{busy.sent} ({busy.errors}) | {', '.join(busy.classes)} |",
        f"| ratio | **{busy.p50_ms / idle.p50_ms:.2f}x** (goal <= 1.25x) | "
        f"**{busy.p99_ms / idle.p99_ms:.2f}x** (goal <= 1.5x) | | |",
        "| 95% interval of the ratio (bootstrap over this run's requests) | "
        "{:.2f}-{:.2f}x | {:.2f}-{:.2f}x | | |".format(
            *ratio_interval(idle.latencies_s, busy.latencies_s, 0.5),
            *ratio_interval(idle.latencies_s, busy.latencies_s, 0.99),
        ),
        *(
            [
                "",
                "Each round on its own (p50, p99 and drain ratios):",
                "",
                "| round | p50 | p99 | drain |",
                "|---|---|---|---|",
                *(
                    "| {} | {:.2f}x | {:.2f}x | {:.2f}x |".format(n, *r.ratios)
                    for n, r in enumerate(result["rounds"], 1)
                ),
            ]
            if len(result["rounds"]) > 1
            else []
        ),
        "",
        "Where a person's time goes (each answer's `Server-Timing` header; ms, p50 / p90):",
        "",
        "| | " + " | ".join(PARTS.values()) + " |",
        "|---|" + "---|" * len(PARTS),
        *(
            f"| {label} | "
            + " | ".join(
                "{:.1f} / {:.1f}".format(*traffic.parts[p]) if p in traffic.parts else "-"
                for p in PARTS
            )
            + " |"
            for label, traffic in (("idle", idle), ("while the backlog drains", busy))
        ),
        "",
        "The slowest 1% of answered requests, mean ms (`rest`: what no part covers: HTTP, the "
        "front's event loop, the client):",
        "",
        "| | requests' latency | " + " | ".join(PARTS.values()) + " | rest |",
        "|---|---|" + "---|" * len(PARTS) + "---|",
        *(
            f"| {label} | "
            + " | ".join(
                f"{traffic.tail[p]:.1f}" if p in traffic.tail else "-"
                for p in ("total", *PARTS, "rest")
            )
            + " |"
            for label, traffic in (("idle", idle), ("while the backlog drains", busy))
        ),
        "",
        f"| backlog drain | {'jobs' if result['backlog'] == 'jobs' else 'images'}/s |",
        "|---|---|",
        f"| alone | {result['solo']:.1f} |",
        f"| beside the traffic | {result['shared']:.1f} |",
        f"| ratio | **{result['shared'] / result['solo']:.2f}x** (goal >= 0.7x) |",
        "",
        "Where the CPU went during each drain (`bench.cpu_share`; cores: 1.00 is one core busy "
        "all along; `other` is the rest of the host):",
        "",
        "| drain | " + " | ".join(cpu_share.PARTS) + " |",
        "|---|" + "---|" * len(cpu_share.PARTS),
        *(
            f"| {label} | " + " | ".join(f"{cpu[p]:.2f}" for p in cpu_share.PARTS) + " |"
            for label, cpu in result["cpu"].items()
        ),
        "",
        "Settings: " + ", ".join(f"`{k}={v}`" for k, v in sorted(result["settings"].items())),
        "",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    from bench.__main__ import machine, payloads, stack_env
    from model_store.store import ensure_model
    from tests.support.stack import production_stack

    parser = argparse.ArgumentParser(prog="python -m bench.priority")
    parser.add_argument("--rate", type=float, default=5.0, help="/predict arrivals per second")
    # the idle p99 is the goal's denominator: 40 s gave ~200 requests, a p99 of their two
    # slowest (85-95 ms between runs); 120 s gives ~600
    parser.add_argument("--idle-seconds", type=float, default=120.0)
    # 1,000 jobs drain in ~16 s on a quiet 2-core box: too few /predict requests for a p99
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--per-request", type=int, default=10)
    parser.add_argument("--priority", default="normal", choices=("high", "normal", "low"))
    parser.add_argument(
        "--backlog",
        default="jobs",
        choices=("jobs", "batch"),
        help="jobs: --jobs queued jobs; batch: one dataset batch over --jobs photos in S3",
    )
    # one round's p99 moves more between runs than most levers do: several rounds, idle and
    # busy windows taking turns, pool their requests (3 rounds: ~1,800 per window)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks-priority.md"))
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="vq-bench-priority-"))
    os.environ.setdefault("BENTOML_HOME", str(workdir / "bentoml"))
    stored = ensure_model("random", seed=0)
    env = stack_env(stored.tag, workdir / "data")
    settings = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(("VQ_BATCH", "VQ_PRIORITY", "VQ_PRED", "VQ_BACKGROUND"))
    }
    env.update(settings)
    data = payloads()
    rounds: list[Round] = []
    with production_stack(env, workdir / "logs", redis_db=13) as stack:
        traffic_for(stack.url, data, args.rate, 5)  # warm-up
        source = upload_dataset(stack, args.jobs) if args.backlog == "batch" else ""
        for n in range(1, args.rounds + 1):
            idle = traffic_for(stack.url, data, args.rate, args.idle_seconds)
            print(f"  round {n}, idle: p50 {idle.p50_ms:.0f} ms p99 {idle.p99_ms:.0f} ms")
            if args.backlog == "jobs":
                solo, _, solo_cpu = drain(
                    stack, data, args.jobs, args.per_request, priority=args.priority
                )
                shared, busy, shared_cpu = drain(
                    stack, data, args.jobs, args.per_request, args.rate, priority=args.priority
                )
            else:
                solo, _, solo_cpu = batch_drain(stack, data, source, args.jobs)
                shared, busy, shared_cpu = batch_drain(stack, data, source, args.jobs, args.rate)
            assert busy is not None
            print(
                f"  round {n}, drain alone {solo:.1f}/s, beside /predict {shared:.1f}/s; "
                f"p50 {busy.p50_ms:.0f} ms p99 {busy.p99_ms:.0f} ms",
                flush=True,
            )
            rounds.append(Round(idle, busy, solo, shared, solo_cpu, shared_cpu))
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "rate": args.rate,
        "jobs": args.jobs,
        "per_request": args.per_request,
        "priority": args.priority,
        "backlog": args.backlog,
        "idle": pooled([r.idle for r in rounds]),
        "busy": pooled([r.busy for r in rounds]),
        # the same work each round: over the rounds, work done / time taken
        "solo": statistics.harmonic_mean([r.solo for r in rounds]),
        "shared": statistics.harmonic_mean([r.shared for r in rounds]),
        "cpu": {
            "alone": mean_shares([r.solo_cpu for r in rounds]),
            "beside the traffic": mean_shares([r.shared_cpu for r in rounds]),
        },
        "rounds": rounds,
        "settings": settings,
    }
    Path(args.output).write_text(render(result))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
