"""Closed-loop HTTP load on loopback: N concurrent clients for a fixed time."""

from __future__ import annotations

import asyncio
import json
import statistics
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    generator: str = "httpx"

    @property
    def per_s(self) -> float:
        return (self.requests - self.errors) / self.seconds


def v2_infer_request(data: bytes, top_k: int = 5) -> tuple[dict[str, str], bytes]:
    """An Open Inference Protocol v2 infer request for one image, as tritonclient sends it.

    Binary tensor data both ways and Triton's classification extension: the same answer as
    ``/predict``'s top 5, so the two routes do the same work per image.
    """
    raw = struct.pack("<I", len(data)) + data
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "IMAGE",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [
                {
                    "name": "PROBABILITIES",
                    "parameters": {"binary_data": True, "classification": top_k},
                }
            ],
        }
    ).encode()
    return {"Inference-Header-Content-Length": str(len(header))}, header + raw


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(
    url: str, payloads: list[bytes], concurrency: int, seconds: float, v2_model: str | None
) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        start = time.perf_counter()
        deadline = start + seconds

        async def user(uid: int) -> None:
            nonlocal errors
            i = uid
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                data = payloads[i % len(payloads)]
                try:
                    if v2_model is None:
                        resp = await client.post(f"{url}/predict", files={"image": ("img", data)})
                    else:
                        headers, body = v2_infer_request(data)
                        resp = await client.post(
                            f"{url}/v2/models/{v2_model}/infer", content=body, headers=headers
                        )
                    ok = resp.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok
                i += concurrency

        await asyncio.gather(*(user(u) for u in range(concurrency)))
        elapsed = time.perf_counter() - start
    return LoadResult(
        concurrency,
        len(latencies),
        errors,
        elapsed,
        statistics.median(latencies) * 1000 if latencies else float("nan"),
        percentile(latencies, 0.99) * 1000,
    )


def run_load(
    url: str,
    payloads: list[bytes],
    concurrency: int,
    seconds: float,
    generator: str = "auto",
    v2_model: str | None = None,
) -> LoadResult:
    """Closed-loop ``/predict`` load (v2 binary infer of ``v2_model`` if given).

    ``auto`` uses wrk when installed, else httpx.
    """
    from bench import wrk

    if generator == "wrk" or (generator == "auto" and wrk.available()):
        return wrk.run_wrk(url, payloads, concurrency, seconds, v2_model=v2_model)
    return asyncio.run(_run(url, payloads, concurrency, seconds, v2_model))


def merge_slices(slices: list[LoadResult]) -> LoadResult:
    """One route's alternated slices as one result.

    Totals of requests, errors and seconds; p50 is the mean of the slices' medians and p99
    the largest slice's p99 (the requests' own latencies are not kept across slices).
    """
    return LoadResult(
        slices[0].concurrency,
        sum(s.requests for s in slices),
        sum(s.errors for s in slices),
        sum(s.seconds for s in slices),
        statistics.fmean(s.p50_ms for s in slices),
        max(s.p99_ms for s in slices),
        generator=slices[0].generator,
    )


def compare_routes(
    url: str, payloads: list[bytes], v2_model: str, concurrency: int, seconds: float
) -> tuple[LoadResult, LoadResult]:
    """``/predict`` and v2 binary infer for ``seconds`` each, alternated in halves.

    The order /predict, v2, v2, /predict puts a drift in the shared machine's load on both
    routes alike, where two back-to-back runs gave it to whichever ran second.
    """
    halves: dict[str | None, list[LoadResult]] = {None: [], v2_model: []}
    for model in (None, v2_model, v2_model, None):
        halves[model].append(run_load(url, payloads, concurrency, seconds / 2, v2_model=model))
    return merge_slices(halves[None]), merge_slices(halves[v2_model])


def unique_jpeg(data: bytes, n: int) -> bytes:
    """``data`` (a JPEG) with a comment segment naming ``n``: same pixels, new bytes.

    Every submitted job then stores its own object, as distinct uploads do, instead of
    hitting the content-addressed copy of one of four photos.
    """
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    comment = f"vq-bench {n}".encode()
    return data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]


async def submit_jobs(
    url: str, payloads: list[bytes], jobs: int, per_request: int = 1, priority: str = "normal"
) -> list[str]:
    """Submit ``jobs`` distinct images, 32 requests at a time; return the job ids.

    One image per request goes to the seed's ``/classify``; more go to ``/v1/jobs`` (with
    ``priority``).
    """
    sem = asyncio.Semaphore(32)
    ids: list[str] = []
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(first: int) -> None:
            count = min(per_request, jobs - first)
            images = [
                unique_jpeg(payloads[i % len(payloads)], i) for i in range(first, first + count)
            ]
            async with sem:
                if per_request == 1:
                    resp = await client.post(f"{url}/classify", files={"image": ("img", images[0])})
                    resp.raise_for_status()
                    ids.append(resp.json()["task_id"])
                    return
                resp = await client.post(
                    f"{url}/v1/jobs",
                    files=[("images", ("img", data)) for data in images],
                    data={"priority": priority},
                )
                resp.raise_for_status()
                ids.extend(job["id"] for job in resp.json()["jobs"])

        await asyncio.gather(*(one(i) for i in range(0, jobs, per_request)))
    return ids


def _utc(value: datetime | str) -> datetime:
    """A timestamp column as an aware UTC datetime (SQLite returns text, naive in UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def run_async_jobs(
    url: str,
    payloads: list[bytes],
    jobs: int,
    database_url: str,
    timeout: float = 600,
    per_request: int = 1,
) -> dict[str, float]:
    """Submit ``jobs`` jobs, wait until all are stored; return throughput and latencies."""
    from sqlalchemy import bindparam, create_engine, text

    t0_wall = time.time()
    ids = asyncio.run(submit_jobs(url, payloads, jobs, per_request))
    engine = create_engine(database_url)
    deadline = time.monotonic() + timeout
    ours: Any = bindparam("ids", expanding=True)
    query = text(
        "SELECT count(*) FILTER (WHERE status IN ('completed','failed')), "
        "count(*) FILTER (WHERE status = 'failed') FROM jobs WHERE id IN :ids"
    ).bindparams(ours)
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            done, failed = conn.execute(query, {"ids": ids}).one()
        if done >= jobs:
            break
        time.sleep(0.2)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT created_at, finished_at FROM jobs "
                "WHERE finished_at IS NOT NULL AND id IN :ids"
            ).bindparams(ours),
            {"ids": ids},
        ).all()
    engine.dispose()
    stamps = [(_utc(c), _utc(f)) for c, f in rows]
    latencies = [(f - c).total_seconds() for c, f in stamps]
    last = max(f for _, f in stamps).timestamp()
    return {
        "jobs": float(jobs),
        "per_request": float(per_request),
        "completed": float(len(rows) - failed),
        "failed": float(failed),
        "jobs_per_s": len(rows) / (last - t0_wall),
        "p50_s": statistics.median(latencies),
        "p99_s": percentile(latencies, 0.99),
    }
