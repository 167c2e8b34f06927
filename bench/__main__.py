"""``make bench``: raw pipeline vs ``/predict`` vs async jobs, in one run; writes docs.

Everything runs on loopback and stops by itself (fixed durations and counts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.load import LoadResult, run_async_jobs, run_load
from bench.raw import RawResult, measure_batch

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")
BATCHES = (1, 4, 8, 16)


def payloads() -> list[bytes]:
    """Real photos (scikit-image) re-encoded as JPEG like typical uploads."""
    import io

    import skimage
    from PIL import Image

    out = []
    for name in PHOTOS:
        image = Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), {platform.system()}"
    )


def raw_phase(backends: list[str], seconds: float, cache: Path) -> list[RawResult]:
    import bentoml

    from model_store.inference import configure_threads, load_classifier
    from model_store.store import ensure_model

    configure_threads(0)
    stored = ensure_model("random", seed=0)
    meta = bentoml.models.get(stored.tag).info.metadata
    labels = tuple(str(label) for label in meta["labels"])  # type: ignore[union-attr]
    data = payloads()
    results = []
    for backend in backends:
        model = load_classifier(
            stored.path,
            stored.tag,
            stored.weights_origin,
            labels,
            backend=backend,
            warmup_batch=16,
            compile_cache_dir=str(cache),
        )
        for batch in BATCHES:
            result = measure_batch(model, data, batch, seconds)
            print(f"  raw {backend} batch {batch}: {result.images_per_s:.1f} img/s", flush=True)
            results.append(result)
    return results


def served_phase(
    backend: str, seconds: float, levels: list[int], jobs: int, workdir: Path, cache: Path
) -> tuple[list[LoadResult], dict[str, Any] | None]:
    from model_store.store import ensure_model
    from tests.support.stack import production_stack

    stored = ensure_model("random", seed=0)
    env = {
        "BENTOML_HOME": os.environ["BENTOML_HOME"],
        "VQ_MODEL_TAG": stored.tag,
        "VQ_WEIGHTS": "random",
        "VQ_DATA_DIR": str(workdir / f"data-{backend}"),
        "VQ_INFERENCE_BACKEND": backend,
        "VQ_COMPILE_CACHE_DIR": str(cache),
    }
    data = payloads()
    with production_stack(env, workdir / f"logs-{backend}", redis_db=12) as stack:
        run_load(stack.url, data, 4, 5)  # warm-up: the batching optimizer trains here
        sync = []
        for c in levels:
            sync.append(run_load(stack.url, data, c, seconds))
            s = sync[-1]
            print(f"  {backend} c={c}: {s.per_s:.1f} req/s p50 {s.p50_ms:.0f} ms err {s.errors}")
        async_result = None
        if jobs:
            stack.start_worker(concurrency=16)
            async_result = run_async_jobs(stack.url, data, jobs, stack.database_url)
            print(f"  {backend} async: {json.dumps(async_result)}", flush=True)
    return sync, async_result


def render(
    raw: list[RawResult],
    served: dict[str, tuple[list[LoadResult], dict[str, Any] | None]],
    args: Any,
) -> str:
    best = max(raw, key=lambda r: r.images_per_s)
    single = min((r for r in raw if r.batch == 1), key=lambda r: r.p50_ms)
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` on {time.strftime('%Y-%m-%d')}: {machine()}.",
        "Model: ResNet18 with seeded random weights (the same compute as the trained one), fp32.",
        "Images: four real photos (scikit-image) as JPEG, 300-640 px. Load generator: httpx on",
        "the same machine (it competes for the cores), closed loop, loopback only. Ratios",
        "compare numbers measured in this one run. Load average (1 min) before the run: "
        f"{args.load_start:.2f} (well under 1 means the machine was otherwise idle).",
        "Why the numbers are what they are, and the levers tried: [performance.md](performance.md).",
        "",
        "## Raw limit (one process: decode + preprocess + forward, no serving)",
        "",
        "| backend | batch | images/s | p50 per batch (ms) |",
        "|---|---|---|---|",
        *(f"| {r.backend} | {r.batch} | {r.images_per_s:.1f} | {r.p50_ms:.0f} |" for r in raw),
        "",
        f"Best raw: **{best.images_per_s:.1f} img/s** ({best.backend}, batch {best.batch}); "
        f"fastest single image: **{single.p50_ms:.0f} ms** ({single.backend}).",
        "",
    ]
    for backend, (sync, jobs) in served.items():
        lines += [
            f"## `POST /predict`, backend `{backend}` (production stack, {args.seconds:.0f} s per level)",
            "",
            "| concurrency | req/s | ratio to best raw | p50 (ms) | p99 (ms) | errors |",
            "|---|---|---|---|---|---|",
            *(
                f"| {s.concurrency} | {s.per_s:.1f} | {s.per_s / best.images_per_s:.2f}x | "
                f"{s.p50_ms:.0f} | {s.p99_ms:.0f} | {s.errors} |"
                for s in sync
            ),
            "",
        ]
        c1 = next((s for s in sync if s.concurrency == 1), None)
        if c1:
            lines += [
                f"Lone request: p50 {c1.p50_ms:.0f} ms = **{c1.p50_ms / single.p50_ms:.2f}x** the "
                "fastest raw single-image pipeline.",
                "",
            ]
        if jobs:
            lines += [
                f"Async jobs, backend `{backend}` ({int(jobs['jobs'])} jobs: Postgres + Redis + S3 "
                "server, 1 worker x 16 threads):",
                "",
                "| jobs/s (first submit to last result stored) | ratio to best raw | "
                "p50 submit->done (s) | p99 (s) | failed |",
                "|---|---|---|---|---|",
                f"| {jobs['jobs_per_s']:.1f} | {jobs['jobs_per_s'] / best.images_per_s:.2f}x | "
                f"{jobs['p50_s']:.2f} | {jobs['p99_s']:.2f} | {int(jobs['failed'])} |",
                "",
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each load level")
    parser.add_argument("--raw-seconds", type=float, default=6.0)
    parser.add_argument("--levels", default="1,8,32,64")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--backends", default="eager,channels_last,onnxruntime,compile")
    parser.add_argument("--served", default="eager,onnxruntime", help="backends to serve")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    args.load_start = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="vq-bench-"))
    os.environ.setdefault("BENTOML_HOME", str(workdir / "bentoml"))
    cache = Path.home() / ".cache" / "visionqueue" / "bench-compile"
    print("bench: raw pipeline ...", flush=True)
    raw = raw_phase(args.backends.split(","), args.raw_seconds, cache)
    levels = [int(x) for x in args.levels.split(",")]
    served = {}
    for backend in args.served.split(","):
        print(f"bench: served stack, backend {backend} ...", flush=True)
        served[backend] = served_phase(backend, args.seconds, levels, args.jobs, workdir, cache)
    text = render(raw, served, args)
    output = Path(args.output)
    output.parent.mkdir(exist_ok=True)
    from bench.chart import draw

    chart = output.with_name("benchmarks.png")
    draw({b: s for b, (s, _) in served.items()}, raw, chart)
    text += f"\n![throughput and latency vs concurrency]({chart.name})\n"
    output.write_text(text)
    print(f"bench: wrote {output} and {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
