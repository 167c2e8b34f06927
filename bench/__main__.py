"""``make bench``: raw pipeline vs ``/predict`` vs async jobs, in one run; writes docs.

Everything runs on loopback and stops by itself (fixed durations and counts).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.load import LoadResult, compare_routes, run_async_jobs, run_load
from bench.lone import LoneResult, cpu_ms_per_job, cpu_seconds, measure_lone, stack_processes
from bench.raw import RawResult, measure_batch

ROOT = Path(__file__).resolve().parents[1]
# What the benchmark needs beyond the product: the dev extras of a source checkout.
DEV_DEPENDENCIES = {
    "matplotlib": "draws docs/benchmarks.png",
    "moto": "the S3-protocol server of the measured stack",
    "tests.support": "starts the stack (a source checkout's tests/ folder)",
}
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


def photo_phase(seconds: float) -> list[dict[str, Any]]:
    """Decode + crop cost of the benchmark photos vs a 12 MP JPEG, exact and draft."""
    import io

    import numpy as np
    from PIL import Image

    from model_store.crops import prepare_crop

    rng = np.random.default_rng(0)
    photo = Image.open(io.BytesIO(payloads()[2])).resize((4000, 3000), Image.Resampling.BICUBIC)
    grain = rng.integers(-12, 12, (3000, 4000, 3))  # sensor-like texture: a realistic file size
    photo = Image.fromarray(np.clip(np.asarray(photo) + grain, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=90)
    big = buf.getvalue()
    exact_big = prepare_crop(big, 60_000_000)[0].astype(int)
    rows = []
    for label, datas, draft in (
        ("benchmark photos (300-640 px)", payloads(), False),
        ("4000x3000 JPEG, exact", [big], False),
        ("4000x3000 JPEG, VQ_JPEG_DRAFT=true", [big], True),
    ):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or done < 3:
            crop, how = prepare_crop(datas[done % len(datas)], 60_000_000, draft)
            done += 1
        ms = (time.perf_counter() - start) / done * 1000
        diff = np.abs(crop.astype(int) - exact_big) if len(datas) == 1 else None
        rows.append(
            {
                "case": label,
                "ms": ms,
                "bytes": sum(len(d) for d in datas) // len(datas),
                "preprocessing": how,
                "diff": f"{int(diff.max())} / {diff.mean():.2f}" if diff is not None else "-",
            }
        )
        print(f"  decode+crop {label}: {ms:.1f} ms ({how})", flush=True)
    return rows


def served_phase(
    backend: str,
    seconds: float,
    levels: list[int],
    jobs: int,
    batch: int,
    workdir: Path,
    cache: Path,
) -> tuple[list[LoadResult], list[dict[str, Any]], list[LoadResult]]:
    from model_store.store import ensure_model
    from tests.support.stack import production_stack

    stored = ensure_model("random", seed=0)
    env = stack_env(stored.tag, workdir / f"data-{backend}")
    env.update(VQ_INFERENCE_BACKEND=backend, VQ_COMPILE_CACHE_DIR=str(cache))
    data = payloads()
    with production_stack(env, workdir / f"logs-{backend}", redis_db=12) as stack:
        run_load(stack.url, data, 4, 5)  # warm-up: the batching optimizer trains here
        sync = []
        for c in levels:
            sync.append(run_load(stack.url, data, c, seconds))
            s = sync[-1]
            print(f"  {backend} c={c}: {s.per_s:.1f} req/s p50 {s.p50_ms:.0f} ms err {s.errors}")
        protocols: list[LoadResult] = []
        if 32 in levels:  # the same images at c=32: /predict and v2 binary infer, alternated
            model = str(stored.tag).split(":")[0]
            protocols = list(compare_routes(stack.url, data, model, 32, seconds))
            for route, p in zip(("/predict", "v2 binary"), protocols, strict=True):
                print(f"  {backend} {route} c=32: {p.per_s:.1f} req/s p50 {p.p50_ms:.0f} ms")
        async_results = []
        if jobs:
            stack.start_worker(concurrency=16)
            for per_request in sorted({1, batch}):
                result = async_jobs_with_cpu(stack, env, data, jobs, per_request)
                print(f"  {backend} async: {json.dumps(result)}", flush=True)
                async_results.append(result)
    return sync, async_results, protocols


def stack_env(model_tag: str, data_dir: Path) -> dict[str, str]:
    """Return the env of a measured server stack serving ``model_tag`` (seeded random weights)."""
    return {
        "BENTOML_HOME": os.environ["BENTOML_HOME"],
        "VQ_MODEL_TAG": model_tag,
        "VQ_WEIGHTS": "random",
        "VQ_DATA_DIR": str(data_dir),
    }


def async_jobs_with_cpu(
    stack: Any, env: dict[str, str], data: list[bytes], jobs: int, per_request: int
) -> dict[str, Any]:
    """Run ``jobs`` async jobs on ``stack``; return throughput, latencies and CPU per job."""
    procs = stack_processes(env["VQ_DATA_DIR"], {"bench client": [os.getpid()]})
    if stack.s3_process is not None:
        procs["S3 server (moto)"] = [stack.s3_process.pid]
    before = cpu_seconds(procs)
    result: dict[str, Any] = dict(
        run_async_jobs(stack.url, data, jobs, stack.database_url, per_request=per_request)
    )
    result["cpu_ms"] = cpu_ms_per_job(before, cpu_seconds(procs), jobs)
    return result


def embedded_phase(jobs: int, lone_jobs: int, workdir: Path) -> dict[str, Any]:
    """``make run``'s embedded default: a lone job's latency, then ``jobs`` jobs with CPU per job."""
    from model_store.store import ensure_model
    from tests.support.launcher import BANNER, launcher_env, start_launcher

    stored = ensure_model("random", seed=0)
    data_dir = workdir / "data-embedded"
    env = launcher_env(data_dir, VQ_MODEL_TAG=stored.tag, VQ_WORKER_CONCURRENCY="16")
    data = payloads()
    out: dict[str, Any] = {}
    with start_launcher(env, workdir / "launcher.log") as launched:
        launched.wait_for_output(BANNER, timeout=600)
        run_load(launched.url, data, 4, 5)  # warm-up, as for the production stack
        lone: LoneResult = measure_lone(launched.url, data, jobs=lone_jobs)
        out["lone"] = lone
        print(
            f"  embedded lone job: p50 {lone.job_p50_ms:.0f} ms, picked up after "
            f"{lone.pickup_p50_ms:.0f} ms (/predict c=1 p50 "
            f"{lone.predict_p50_ms:.0f} ms)",
            flush=True,
        )
        procs = stack_processes(str(data_dir), {"bench client": [os.getpid()]})
        before = cpu_seconds(procs)
        database_url = f"sqlite:///{(data_dir / 'visionqueue.db').resolve()}"
        result: dict[str, Any] = dict(run_async_jobs(launched.url, data, jobs, database_url))
        result["cpu_ms"] = cpu_ms_per_job(before, cpu_seconds(procs), jobs)
        print(f"  embedded async: {json.dumps(result)}", flush=True)
        out["jobs"] = result
        launched.interrupt_and_wait(60)
    return out


def _cpu_table(jobs: list[dict[str, Any]]) -> list[str]:
    """Per-process CPU per job (ms) of each async run, from /proc before and after."""
    runs = [j for j in jobs if "cpu_ms" in j]
    if not runs:
        return []
    roles = sorted({r for j in runs for r in j["cpu_ms"]})
    heads = [f"{int(j['per_request'])} per request" for j in runs]
    lines = [
        "CPU per job (ms, user + system, every process of the stack, from /proc):",
        "",
        "| process | " + " | ".join(heads) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for role in roles:
        lines.append(
            f"| {role} | " + " | ".join(f"{j['cpu_ms'].get(role, 0.0):.1f}" for j in runs) + " |"
        )
    lines.append(
        "| **all** | " + " | ".join(f"{sum(j['cpu_ms'].values()):.1f}" for j in runs) + " |"
    )
    return [*lines, ""]


def _embedded_section(embedded: dict[str, Any], best: RawResult) -> list[str]:
    lone: LoneResult = embedded["lone"]
    job = embedded["jobs"]
    ratio = job["jobs_per_s"] / best.images_per_s
    return [
        "## Async jobs on `make run`'s embedded default (SQLite, filesystem broker, local images)",
        "",
        f"A lone job (one every 2 s, {lone.jobs} jobs): submit -> `completed` p50 "
        f"**{lone.job_p50_ms:.0f} ms** (p90 {lone.job_p90_ms:.0f} ms; picked up by a worker "
        f"after {lone.pickup_p50_ms:.0f} ms, p50); sync `/predict` at "
        f"c=1 in the same stack: p50 {lone.predict_p50_ms:.0f} ms. Target (p50 + 150 ms): "
        f"{'met' if lone.met else '**not met**'}.",
        "",
        "| jobs | jobs/s (first submit to last result stored) | ratio to best raw | "
        "p50 submit->done (s) | p99 (s) | failed |",
        "|---|---|---|---|---|---|",
        f"| {int(job['jobs'])} | {job['jobs_per_s']:.1f} | {ratio:.2f}x | {job['p50_s']:.2f} | "
        f"{job['p99_s']:.2f} | {int(job['failed'])} |",
        "",
        *_cpu_table([job]),
    ]


def _targets(
    best: RawResult,
    single: RawResult,
    sync: list[LoadResult],
    jobs: list[dict[str, Any]],
    protocols: list[LoadResult],
) -> list[str]:
    """The issue's ratio targets against this run's numbers."""
    rows = []
    by_c = {s.concurrency: s for s in sync}
    if 32 in by_c:
        ratio = by_c[32].per_s / best.images_per_s
        rows.append(("`/predict` c=32 >= 0.95x best raw", f"{ratio:.2f}x", ratio >= 0.95))
    if 1 in by_c:
        ratio = by_c[1].p50_ms / single.p50_ms
        rows.append(("c=1 p50 <= 1.1x raw single image", f"{ratio:.2f}x", ratio <= 1.1))
    if 64 in by_c:
        errors = by_c[64].errors
        rows.append(("0 errors at c=64", f"{errors} errors", errors == 0))
    if len(protocols) == 2:
        predict, v2 = protocols
        ratio = v2.per_s / predict.per_s
        rows.append(
            ("v2 binary infer c=32 >= /predict c=32 (images/s)", f"{ratio:.2f}x", ratio >= 0.98)
        )
    for result in jobs:
        ratio = result["jobs_per_s"] / best.images_per_s
        per = int(result["per_request"])
        how = "one image per request" if per == 1 else f"{per} images per request"
        rows.append((f"async jobs ({how}) >= 0.85x best raw", f"{ratio:.2f}x", ratio >= 0.85))
    return [
        "| target | measured | met? |",
        "|---|---|---|",
        *(f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in rows),
        "",
    ]


def render(
    raw: list[RawResult],
    served: dict[str, tuple[list[LoadResult], list[dict[str, Any]], list[LoadResult]]],
    photos: list[dict[str, Any]],
    args: Any,
    embedded: dict[str, Any] | None = None,
) -> str:
    best = max(raw, key=lambda r: r.images_per_s)
    single = min((r for r in raw if r.batch == 1), key=lambda r: r.p50_ms)
    generators = sorted({s.generator for sync, _, _ in served.values() for s in sync})
    generator = {
        "wrk": "wrk (C, one thread; ~0.3 ms of CPU per request)",
        "httpx": "httpx (Python; ~2 ms of CPU per request, install wrk for a lighter one)",
    }
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `{args.command}` on {time.strftime('%Y-%m-%d')}: {machine()}.",
        "Model: ResNet18 with seeded random weights (the same compute as the trained one), fp32.",
        "Images: four real photos (scikit-image) as JPEG, 300-640 px. Load generator for",
        f"`/predict`: {', '.join(generator.get(g, g) for g in generators)}, on the same machine",
        "(it competes for the cores), closed loop, loopback only; async jobs are submitted with",
        "httpx, each a distinct file. Ratios compare numbers measured in this one run. Load",
        f"average (1 min) before the run: {args.load_start:.2f} (well under 1 means the machine",
        "was otherwise idle).",
        "Why the numbers are what they are, and the levers tried: [performance.md](performance.md).",
        "`/predict` while a job backlog drains (interactive first, issue 26): "
        "[benchmarks-priority.md](benchmarks-priority.md) (`python -m bench.priority`).",
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
    for backend, (sync, jobs, protocols) in served.items():
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
        if protocols:
            lines += [
                f"Open Inference Protocol v2 vs `/predict`, backend `{backend}`: the same images "
                "at concurrency 32, one image per request (v2: binary tensor data, top 5 by "
                "the classification extension, as tritonclient sends it), alternated /predict, "
                f"v2, v2, /predict for {args.seconds / 2:.0f} s each; p50 is the mean of a "
                "route's two medians, p99 the larger of its two:",
                "",
                "| route | images/s | p50 (ms) | p99 (ms) | errors |",
                "|---|---|---|---|---|",
                *(
                    f"| {route} | {p.per_s:.1f} | {p.p50_ms:.0f} | {p.p99_ms:.0f} | {p.errors} |"
                    for route, p in zip(
                        ("`POST /predict`", "`POST /v2/.../infer`"), protocols, strict=True
                    )
                ),
                "",
            ]
        if jobs:
            lines += [
                f"Async jobs, backend `{backend}` ({int(jobs[0]['jobs'])} jobs each: Postgres + "
                "Redis + S3 server, 1 worker x 16 threads):",
                "",
                "| images per request | jobs/s (first submit to last result stored) | "
                "ratio to best raw | p50 submit->done (s) | p99 (s) | failed |",
                "|---|---|---|---|---|---|",
                *(
                    f"| {int(j['per_request'])} | {j['jobs_per_s']:.1f} | "
                    f"{j['jobs_per_s'] / best.images_per_s:.2f}x | {j['p50_s']:.2f} | "
                    f"{j['p99_s']:.2f} | {int(j['failed'])} |"
                    for j in jobs
                ),
                "",
                *_cpu_table(jobs),
            ]
        lines += [
            f"Targets of issue #7, backend `{backend}`:",
            "",
            *_targets(best, single, sync, jobs, protocols),
        ]
    if embedded:
        lines += _embedded_section(embedded, best)
    if photos:
        lines += [
            "## Large photos (decode + resize + crop, one thread)",
            "",
            "| image | bytes | ms per image | preprocessing | max / mean abs diff from exact (0-255) |",
            "|---|---|---|---|---|",
            *(
                f"| {p['case']} | {p['bytes']:,} | {p['ms']:.1f} | `{p['preprocessing']}` | "
                f"{p['diff']} |"
                for p in photos
            ),
            "",
        ]
    return "\n".join(lines)


def keep_batches_section(output: Path, previous: str) -> None:
    """Carry ``python -m bench.batches``' section over from the page this run replaced."""
    from bench.batches import END, START, write_section

    if START in previous and END in previous:
        section = START + previous.split(START, 1)[1].split(END, 1)[0] + END + "\n"
        write_section(output, section)


def missing_dev_dependencies(needed: dict[str, str] = DEV_DEPENDENCIES) -> list[str]:
    """Return ``module (what for)`` for each dev-only module this interpreter cannot import."""
    missing = []
    for module, purpose in needed.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a dotted name whose parent package is missing
            found = False
        if not found:
            missing.append(f"{module} ({purpose})")
    return missing


def command_line(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """Return how this run was started: ``make bench``, or the measuring options it changed."""
    changed = [
        f"--{name.replace('_', '-')} {value}"
        for name, value in vars(args).items()
        if name != "output" and value != parser.get_default(name)
    ]
    return " ".join(["python -m bench", *changed]) if changed else "make bench"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each load level")
    parser.add_argument("--raw-seconds", type=float, default=6.0)
    parser.add_argument("--levels", default="1,8,32,64")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument(
        "--job-batch", type=int, default=10, help="images per /v1/jobs request, second async run"
    )
    parser.add_argument("--backends", default="eager,channels_last,onnxruntime,openvino,compile")
    parser.add_argument("--served", default="eager,onnxruntime,openvino", help="backends to serve")
    parser.add_argument(
        "--embedded-jobs",
        type=int,
        default=300,
        help="jobs through make run's embedded default (0 = skip that stack)",
    )
    parser.add_argument("--lone-jobs", type=int, default=10, help="lone jobs, one every 2 s")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    args.command = command_line(parser, args)
    missing = missing_dev_dependencies(DEV_DEPENDENCIES)
    if missing:
        print(
            "bench: the benchmark is a developer tool; missing: "
            + ", ".join(missing)
            + ". Run `make bench` in a source checkout (it installs the dev dependencies).",
            file=sys.stderr,
        )
        return 2
    args.load_start = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="vq-bench-"))
    os.environ.setdefault("BENTOML_HOME", str(workdir / "bentoml"))
    cache = Path.home() / ".cache" / "visionqueue" / "bench-compile"
    print("bench: raw pipeline ...", flush=True)
    raw = raw_phase(args.backends.split(","), args.raw_seconds, cache)
    print("bench: large photos ...", flush=True)
    photos = photo_phase(args.raw_seconds / 2)
    levels = [int(x) for x in args.levels.split(",")]
    served = {}
    for backend in args.served.split(","):
        print(f"bench: served stack, backend {backend} ...", flush=True)
        served[backend] = served_phase(
            backend, args.seconds, levels, args.jobs, args.job_batch, workdir, cache
        )
    embedded = None
    if args.embedded_jobs:
        print("bench: make run's embedded default ...", flush=True)
        embedded = embedded_phase(args.embedded_jobs, args.lone_jobs, workdir)
    text = render(raw, served, photos, args, embedded)
    output = Path(args.output)
    previous = output.read_text() if output.exists() else ""
    output.parent.mkdir(exist_ok=True)
    from bench.chart import draw

    chart = output.with_name("benchmarks.png")
    draw({b: s for b, (s, _, _) in served.items()}, raw, chart)
    text += f"\n![throughput and latency vs concurrency]({chart.name})\n"
    output.write_text(text)
    keep_batches_section(output, previous)
    print(f"bench: wrote {output} and {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
