"""``python -m bench.batches``: a dataset batch against the raw pipeline, in one run, and the
planner's memory and database size against the number of keys.

Phases: the raw pipeline (decode + preprocess + forward in one process, the best of a few
batch sizes); a batch of ``--images`` real photos on the server stack (PostgreSQL, Redis,
an S3 server holding them, a Bento server and one Celery worker); the same on ``make run``'s
embedded default (a ``file://`` folder); then manifests of ``--keys`` keys planned into
chunk rows in a child process each (peak RSS, rows, database bytes) on SQLite and
PostgreSQL. Writes its section of docs/benchmarks.md (between the ``batches`` markers,
which ``python -m bench`` keeps).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- batches:start -->", "<!-- batches:end -->"
WARM_UP = 128  # images of a first, unmeasured batch (model warm-up, batch-size tuning)
PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "camera.png", "coins.png")


def photos(count: int) -> list[bytes]:
    """``count`` JPEGs of real photos (scikit-image), each a distinct crop so none repeats."""
    import skimage
    from PIL import Image

    base = [Image.open(Path(skimage.__file__).parent / "data" / n).convert("RGB") for n in PHOTOS]
    out = []
    for i in range(count):
        image = base[i % len(base)]
        w, h = image.size
        dx, dy = (i // len(base)) % 17, (i // len(base) // 17) % 17
        buf = io.BytesIO()
        image.crop((dx, dy, w - 16 + dx, h - 16 + dy)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class RawProbe:
    """The raw pipeline (decode + preprocess + forward in this process), measured right before
    and right after each batch run: the ratio is to their mean, so a drift in the shared
    machine's load falls on both sides."""

    BATCHES = (8, 16)
    BACKENDS = ("eager", "onnxruntime")

    def __init__(self) -> None:
        import bentoml

        from model_store.inference import configure_threads, load_classifier
        from model_store.store import ensure_model

        configure_threads(0)
        stored = ensure_model("random", seed=0)
        meta = bentoml.models.get(stored.tag).info.metadata
        labels = tuple(str(label) for label in meta["labels"])  # type: ignore[union-attr]
        # the best raw pipeline: eager torch and ONNX Runtime (the served default), each
        # measured, the faster one counts
        self.models = [
            load_classifier(
                stored.path,
                stored.tag,
                stored.weights_origin,
                labels,
                backend=backend,
                warmup_batch=16,
            )
            for backend in self.BACKENDS
        ]
        self.data = raw_payloads()

    def best(self, seconds: float) -> dict[str, Any]:
        import psutil

        from bench.raw import measure_batch

        started = psutil.Process().cpu_times()
        results = [
            (model.info.backend, measure_batch(model, self.data, b, seconds))
            for model in self.models
            for b in self.BATCHES
        ]
        ended = psutil.Process().cpu_times()
        backend, best = max(results, key=lambda r: r[1].images_per_s)
        images = sum(r.images_per_s * seconds for _, r in results)  # warm-ups left out
        cpu = (ended.user + ended.system - started.user - started.system) / images * 1000
        return {
            "images_per_s": best.images_per_s,
            "batch": best.batch,
            "backend": backend,
            "cpu_ms": round(cpu, 1),
        }


def raw_payloads() -> list[bytes]:
    from bench.__main__ import payloads

    return payloads()


def run_batch(
    url: str,
    source: str,
    headers: dict[str, str],
    timeout: float,
    procs: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """Submit one batch, wait for it; images/s from submission to the last line stored, and
    the CPU milliseconds per image each of ``procs``' process groups spent meanwhile."""
    from bench.lone import cpu_seconds

    before = cpu_seconds(procs or {})
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        started = time.monotonic()
        resp = client.post("/v1/batches", json={"source": source})
        resp.raise_for_status()
        batch_id = resp.json()["id"]
        while True:
            view = client.get(f"/v1/batches/{batch_id}").json()
            if view["status"] in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"batch not done in {timeout}s: {view}")
            time.sleep(0.25)
        wall = time.monotonic() - started
        lines = client.get(f"/v1/batches/{batch_id}/results").text.splitlines()
    after = cpu_seconds(procs or {})
    keys = [json.loads(line)["key"] for line in lines]
    assert len(keys) == len(set(keys)) == view["total"], "one line per object"
    cpu = {k: round((after[k] - before.get(k, 0.0)) / len(keys) * 1000, 1) for k in after}
    return {
        "cpu_ms": cpu,
        "images": view["total"],
        "failed": view["failed"],
        "seconds": round(wall, 1),
        "images_per_s": view["total"] / wall,
        "server_rate": view["images_per_second"],
    }


def stack_phase(
    data: list[bytes], workdir: Path, lanes: int, raw_after: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    from minio import Minio

    from bench.__main__ import stack_env
    from bench.lone import stack_processes
    from model_store.store import ensure_model
    from tests.support.stack import production_stack

    stored = ensure_model("random", seed=0)
    env = stack_env(stored.tag, workdir / "data-stack")
    env["VQ_BATCH_LANES"] = str(lanes)
    with production_stack(env, workdir / "logs-stack", redis_db=12) as stack:
        s3 = Minio(stack.s3_endpoint.removeprefix("http://"), "vq-test-access",
                   "vq-test-secret", secure=False, region="us-east-1")  # fmt: skip
        s3.make_bucket("dataset")
        for i, body in enumerate(data):
            s3.put_object("dataset", f"photos/{i:05d}.jpg", io.BytesIO(body), len(body))
        for i, body in enumerate(data[:WARM_UP]):
            s3.put_object("dataset", f"warm-up/{i:05d}.jpg", io.BytesIO(body), len(body))
        stack.start_worker(concurrency=lanes + 2)
        run_batch(stack.url, "s3://dataset/warm-up/", {}, 600)
        procs = stack_processes(env["VQ_DATA_DIR"], {"bench client": [os.getpid()]})
        if stack.s3_process is not None:
            procs["S3 server (moto)"] = [stack.s3_process.pid]
        result = run_batch(stack.url, "s3://dataset/photos/", {}, 1800, procs)
        stack.stop_workers()
        return {**result, "raw_after": raw_after()}


def embedded_phase(
    data: list[bytes], workdir: Path, lanes: int, raw_after: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    from bench.lone import stack_processes
    from model_store.store import ensure_model
    from tests.support.launcher import BANNER, launcher_env, start_launcher

    folder, warm = workdir / "dataset" / "photos", workdir / "dataset" / "warm-up"
    for target, bodies in ((folder, data), (warm, data[:WARM_UP])):
        target.mkdir(parents=True)
        for i, body in enumerate(bodies):
            (target / f"{i:05d}.jpg").write_bytes(body)
    stored = ensure_model("random", seed=0)
    env = launcher_env(
        workdir / "data-embedded",
        VQ_MODEL_TAG=stored.tag,
        VQ_BATCH_LOCAL_ROOTS=str(folder.parent),
        VQ_BATCH_LANES=str(lanes),
        VQ_WORKER_CONCURRENCY=str(lanes + 2),
    )
    with start_launcher(env, workdir / "launcher.log") as launched:
        launched.wait_for_output(BANNER, timeout=600)
        run_batch(launched.url, f"file://{warm}/", {}, 600)
        procs = stack_processes(str(workdir / "data-embedded"), {"bench client": [os.getpid()]})
        result = run_batch(launched.url, f"file://{folder}/", {}, 1800, procs)
        launched.interrupt_and_wait(60)
    return {**result, "raw_after": raw_after()}


def plan_in_child(keys: int, database_url: str, workdir: Path) -> dict[str, Any]:
    """Plan a manifest of ``keys`` keys in a fresh process; its peak RSS and the rows."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.batches", "--plan-child", str(keys), database_url,
         str(workdir)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def plan_child(keys: int, database_url: str, workdir: Path) -> dict[str, Any]:
    import httpx as _httpx

    from jobs.batches.plan import plan_batch
    from jobs.lease_keeper import LeaseKeeper
    from jobs.resources import Resources
    from persistence import batches_repo
    from persistence.db import get_engine, session_scope
    from persistence.local_images import LocalImageStore
    from persistence.migrate import upgrade_database
    from persistence.models import new_job_id
    from visionqueue.core.settings import BatchSettings, DatabaseSettings, Settings

    folder = workdir / f"manifest-{keys}"
    folder.mkdir(exist_ok=True)
    manifest = folder / "keys.txt"
    with manifest.open("w") as fh:  # written here, streamed: the parent never holds them
        for i in range(keys):
            fh.write(f"shard-{i % 997:03d}/object-{i:08d}.jpg\n")
    upgrade_database(database_url)
    engine = get_engine(database_url)
    settings = Settings(
        data_dir=workdir,
        database=DatabaseSettings(url=database_url),
        batch=BatchSettings(local_roots=[str(folder)]),
    )
    res = Resources(settings, engine, LocalImageStore(workdir / "img", "http://x", b"k"),
                    _httpx.Client(), LeaseKeeper(engine, 15))  # fmt: skip
    batch_id = new_job_id()
    with session_scope(engine) as session:
        batches_repo.create_batch(session, batch_id=batch_id, source=f"file://{manifest}",
                                  output="file:///tmp/x/", owner=None, model_name=None,
                                  top_k=5, metadata=None, webhook_url=None)  # fmt: skip
    import gc
    import threading

    import psutil

    gc.collect()
    me = psutil.Process()
    rss_before = me.memory_info().rss
    peak = rss_before
    stop = threading.Event()

    def sample() -> None:  # the process's current RSS every 20 ms while it plans
        nonlocal peak
        while not stop.wait(0.02):
            peak = max(peak, me.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    report = plan_batch(batch_id, res)
    seconds = time.monotonic() - started
    stop.set()
    sampler.join()
    peak = max(peak, me.memory_info().rss)
    assert report.finished
    if database_url.startswith("sqlite"):
        engine.dispose()  # checkpoints the WAL into the file
        db = Path(database_url.removeprefix("sqlite:///"))
        size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
    else:
        from sqlalchemy import text

        with engine.connect() as conn:
            size = int(conn.execute(text("SELECT pg_total_relation_size('batch_chunks')"
                                         " + pg_total_relation_size('batches')")).scalar() or 0)  # fmt: skip
    manifest.unlink()
    return {
        "keys": keys,
        "chunks": report.chunks,
        "seconds": round(seconds, 1),
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_peak_mb": round(peak / 2**20, 1),
        "db_mb": round(size / 2**20, 1),
    }


def render(args: argparse.Namespace, runs: dict[str, Any], plans: list[dict[str, Any]]) -> str:
    lines = [
        START,
        "## Dataset batches (`python -m bench.batches`)",
        "",
        f"One run on {_machine()}; load average {args.load_start:.1f} at the start. The machine "
        "is shared with other developers' work: read the ratios, each measured against the raw "
        "pipeline right before and right after its batch (their mean), not the absolute "
        "figures. Seeded random-init ResNet18 (`random-init:seed=0`); the raw pipeline is the "
        "faster of eager torch and ONNX Runtime (the served default), "
        f"{args.images} real photos (scikit-image, distinct crops, JPEG q90), "
        f"`VQ_BATCH_LANES={args.lanes}`, 64 objects a chunk, after an unmeasured batch of "
        f"{WARM_UP}. Command: `python -m bench.batches {' '.join(args.argv)}`.",
        "",
        "| deployment | images | failed | seconds (submit to last line) | img/s | raw before / after (img/s) | ratio to raw |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        raw = (r["raw_before"]["images_per_s"] + r["raw_after"]["images_per_s"]) / 2
        lines.append(
            f"| {name} | {r['images']} | {r['failed']} | {r['seconds']} | "
            f"{r['images_per_s']:.1f} | {r['raw_before']['images_per_s']:.1f} "
            f"({r['raw_before']['backend']}) / {r['raw_after']['images_per_s']:.1f} "
            f"({r['raw_after']['backend']}) | **{r['images_per_s'] / raw:.2f}x** |"
        )
    lines += [
        "",
        "Where the time goes: CPU milliseconds per image of each process group while the "
        "measured batch ran; the raw pipeline spends the figure after `raw` (batches of 8 and "
        "16, warm-ups included). On 2 cores every millisecond spent outside decode, crop and "
        "forward (serving objects from the S3 server, relaying crops, the database, other "
        "developers' work) is taken from them.",
        "",
    ]
    for name, r in runs.items():
        cpu = ", ".join(f"{k} {v}" for k, v in sorted(r["cpu_ms"].items(), key=lambda kv: -kv[1]))
        lines.append(f"- {name}: raw {r['raw_before']['cpu_ms']}; {cpu}")
    lines += [
        "",
        "Planning a manifest into chunk rows (64 keys a chunk, 50 chunks a transaction), in a "
        "fresh process per size: its RSS before planning (Python, SQLAlchemy and the worker's "
        "imports) and the highest RSS sampled every 20 ms while it planned.",
        "",
        "| database | keys | chunks | seconds | RSS before (MB) | peak RSS (MB) | database (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        lines.append(
            f"| {p['database']} | {p['keys']:,} | {p['chunks']:,} | {p['seconds']} | "
            f"{p['rss_before_mb']} | {p['rss_peak_mb']} | {p['db_mb']} |"
        )
    lines += ["", END]
    return "\n".join(lines) + "\n"


def _machine() -> str:
    from bench.__main__ import machine

    return machine()


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the batches section of ``path``."""
    text = path.read_text() if path.exists() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--plan-child"]:
        print(json.dumps(plan_child(int(argv[1]), argv[2], Path(argv[3]))))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.batches")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--lanes", type=int, default=4)
    parser.add_argument("--raw-seconds", type=float, default=6.0)
    parser.add_argument("--keys", default="10000,100000,1000000")
    parser.add_argument("--skip", default="", help="phases to skip: stack,embedded,plan")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    args.argv = argv
    args.load_start = os.getloadavg()[0]
    skip = set(args.skip.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="vq-bench-batches-"))
    os.environ.setdefault("BENTOML_HOME", str(workdir / "bentoml"))
    print("bench.batches: raw pipeline ...", flush=True)
    probe = RawProbe()
    data = photos(args.images)
    runs: dict[str, Any] = {}
    phases = {
        "server stack, s3:// prefix": ("stack", stack_phase),
        "make run, file:// folder": ("embedded", embedded_phase),
    }
    for name, (key, phase) in phases.items():
        if key in skip:
            continue
        before = probe.best(args.raw_seconds)
        print(f"bench.batches: {name} (raw before: {before['images_per_s']:.1f} img/s) ...")
        result = phase(data, workdir, args.lanes, lambda: probe.best(args.raw_seconds))
        result["raw_before"], result["raw_after"] = before, result.pop("raw_after")
        runs[name] = result
        print(f"  {result}", flush=True)
    plans = []
    if "plan" not in skip:
        from tests.support.postgres import throwaway_postgres_url

        for keys in (int(k) for k in args.keys.split(",")):
            for name in ("SQLite", "PostgreSQL"):
                if name == "SQLite":
                    result = plan_in_child(keys, f"sqlite:///{workdir}/plan-{keys}.db", workdir)
                else:
                    with throwaway_postgres_url() as url:
                        result = plan_in_child(keys, url, workdir)
                plans.append({"database": name, **result})
                print(f"  plan {name}: {result}", flush=True)
    section = render(args, runs, plans)
    write_section(Path(args.output), section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
