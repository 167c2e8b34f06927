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


def raw_phase(seconds: float) -> list[RawResult]:
    from model_store.inference import configure_threads, load_classifier
    from model_store.store import ensure_model

    configure_threads(0)
    stored = ensure_model("random", seed=0)
    import bentoml

    meta = bentoml.models.get(stored.tag).info.metadata
    labels = tuple(str(label) for label in meta["labels"])  # type: ignore[union-attr]
    model = load_classifier(stored.path, stored.tag, stored.weights_origin, labels)
    data = payloads()
    return [measure_batch(model, data, b, seconds) for b in (1, 4, 8, 16)]


def served_phase(
    seconds: float, levels: list[int], jobs: int, workdir: Path
) -> tuple[list[LoadResult], dict[str, Any] | None]:
    from model_store.store import ensure_model
    from tests.support.stack import production_stack

    stored = ensure_model("random", seed=0)
    env = {
        "BENTOML_HOME": os.environ["BENTOML_HOME"],
        "VQ_MODEL_TAG": stored.tag,
        "VQ_WEIGHTS": "random",
        "VQ_DATA_DIR": str(workdir / "data"),
    }
    data = payloads()
    with production_stack(env, workdir / "logs", redis_db=12) as stack:
        run_load(stack.url, data, 4, 5)  # warm-up: the batching optimizer trains here
        sync = [run_load(stack.url, data, c, seconds) for c in levels]
        async_result = None
        if jobs:
            stack.start_worker(concurrency=16)
            async_result = run_async_jobs(stack.url, data, jobs, stack.database_url)
    return sync, async_result


def render(
    raw: list[RawResult], sync: list[LoadResult], jobs: dict[str, Any] | None, args: Any
) -> str:
    best = max(raw, key=lambda r: r.images_per_s)
    single = next(r for r in raw if r.batch == 1)
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` on {time.strftime('%Y-%m-%d')}: {machine()}.",
        "Model: ResNet18 (seeded random init: same compute as the trained one), eager fp32.",
        "Images: four real photos (scikit-image) as JPEG, 300-640 px. Load generator: httpx on",
        "the same machine (it competes for the 2 cores), closed loop, loopback only.",
        "",
        "## Raw limit (one process: decode + preprocess + forward, no serving)",
        "",
        "| batch | images/s | p50 per batch (ms) |",
        "|---|---|---|",
        *(f"| {r.batch} | {r.images_per_s:.1f} | {r.p50_ms:.0f} |" for r in raw),
        "",
        f"Best raw: **{best.images_per_s:.1f} img/s** (batch {best.batch}); single image "
        f"**{single.p50_ms:.0f} ms**.",
        "",
        f"## `POST /predict` (production stack, {args.seconds:.0f} s per level)",
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
            f"Lone request: p50 {c1.p50_ms:.0f} ms = **{c1.p50_ms / single.p50_ms:.2f}x** the raw "
            "single-image pipeline.",
            "",
        ]
    if jobs:
        lines += [
            f"## Async jobs ({int(jobs['jobs'])} jobs: Postgres + Redis + S3 server, 1 worker x 16 threads)",
            "",
            "| jobs/s (first submit to last result stored) | ratio to best raw | p50 submit->done (s) "
            "| p99 (s) | failed |",
            "|---|---|---|---|---|",
            f"| {jobs['jobs_per_s']:.1f} | {jobs['jobs_per_s'] / best.images_per_s:.2f}x | "
            f"{jobs['p50_s']:.2f} | {jobs['p99_s']:.2f} | {int(jobs['failed'])} |",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each load level")
    parser.add_argument("--raw-seconds", type=float, default=8.0)
    parser.add_argument("--levels", default="1,8,32,64")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="vq-bench-"))
    os.environ.setdefault("BENTOML_HOME", str(workdir / "bentoml"))
    print("bench: raw pipeline ...", flush=True)
    raw = raw_phase(args.raw_seconds)
    for r in raw:
        print(f"  raw batch {r.batch}: {r.images_per_s:.1f} img/s", flush=True)
    print("bench: served stack ...", flush=True)
    levels = [int(x) for x in args.levels.split(",")]
    sync, jobs = served_phase(args.seconds, levels, args.jobs, workdir)
    for s in sync:
        print(f"  c={s.concurrency}: {s.per_s:.1f} req/s p50 {s.p50_ms:.0f} ms errors {s.errors}")
    if jobs:
        print(f"  async: {json.dumps(jobs)}")
    text = render(raw, sync, jobs, args)
    output = Path(args.output)
    output.parent.mkdir(exist_ok=True)
    chart = output.with_name("benchmarks.png")
    from bench.chart import draw

    draw(sync, raw, chart)
    text += f"\n![throughput and latency vs concurrency]({chart.name})\n"
    output.write_text(text)
    print(f"bench: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
