"""``python -m bench.models``: per-architecture raw limit vs served, and a second idle model.

For each architecture a user is likely to pick, a seeded random-init 1000-class model is
imported (``visionqueue import-model``'s path), measured raw (decode + its preprocessing +
forward in one process, batch 16) and served (``bentoml serve`` with ``VQ_MODELS`` naming it,
closed-loop ``/predict`` load), in the same run. Then the first architecture is served alone
and next to an idle second model. Writes ``docs/benchmarks-models.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.load import LoadResult, run_load

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURES = ("resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0")


def import_architecture(arch: str, workdir: Path) -> Any:
    """Import a seeded random-init ``arch`` (1000 classes: ImageNet labels) as ``bench-ARCH``."""
    import torch
    from torchvision.models import get_model

    from model_store.importer import import_classifier

    torch.manual_seed(0)
    path = workdir / f"{arch}.pt"
    torch.save(get_model(arch, weights=None).state_dict(), path)
    return import_classifier(f"bench-{arch.replace('_', '-')}", path, arch=arch)


def raw_rate(stored: Any, payloads: list[bytes], seconds: float, batch: int = 16) -> float:
    """Images per second of decode + the model's preprocessing + forward, no serving."""
    from bench.raw import measure_batch
    from model_store.inference import load_classifier

    model = load_classifier(
        stored.path,
        stored.tag,
        stored.weights_origin,
        tuple(stored.metadata["labels"]),
        backend="onnxruntime",
        warmup_batch=batch,
        metadata=stored.metadata,
    )
    return measure_batch(model, payloads, batch, seconds).images_per_s


def served_load(
    models: list[str],
    payloads: list[bytes],
    concurrency: int,
    seconds: float,
    workdir: Path,
    backend: str = "onnxruntime",
) -> LoadResult:
    """Serve ``models`` (the first is the default) and load the default with ``/predict``."""
    from tests.support.servers import bento_server

    env = {
        "BENTOML_HOME": os.environ["BENTOML_HOME"],
        "VQ_MODELS": ",".join(models),
        "VQ_DATA_DIR": str(workdir / f"data-{'-'.join(models)}"),
        "VQ_INFERENCE_BACKEND": backend,
    }
    with bento_server(env, workdir / f"bento-{'-'.join(models)}.log", timeout=600) as url:
        run_load(url, payloads, 4, 5)  # warm-up
        return run_load(url, payloads, concurrency, seconds)


def render(rows: list[dict[str, Any]], idle: dict[str, LoadResult], args: Any) -> str:
    from bench.__main__ import machine

    lines = [
        "# Benchmarks: architectures and a second model",
        "",
        f"`python -m bench.models` (`make bench` runs it too). Machine: {machine()}. "
        f"Load average at start: {args.load_start:.1f}. Random-init 1000-class models "
        "(seeded; nothing is downloaded), ONNX Runtime backend, real photos from scikit-image "
        f"re-encoded as JPEG, `/predict` at concurrency {args.concurrency} for "
        f"{args.seconds:.0f} s per row.",
        "",
        "| architecture | preprocessing | raw limit (img/s, batch 16) | served (req/s) "
        "| served / raw | served p50 (ms) | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        load: LoadResult = row["served"]
        lines.append(
            f"| {row['arch']} | {row['prep']} | {row['raw']:.1f} | {load.per_s:.1f} | "
            f"{load.per_s / row['raw']:.2f} | {load.p50_ms:.0f} | {load.errors} |"
        )
    if idle:
        alone, beside = idle["alone"], idle["beside"]
        lines += [
            "",
            "## A second, idle model",
            "",
            f"The same load on `{args.first}` served alone, then with `{args.second}` also "
            "served (its own batching queue, loaded, idle):",
            "",
            "| served | req/s | p50 (ms) | p99 (ms) | errors |",
            "|---|---|---|---|---|",
            f"| {args.first} alone | {alone.per_s:.1f} | {alone.p50_ms:.0f} | "
            f"{alone.p99_ms:.0f} | {alone.errors} |",
            f"| {args.first} + idle {args.second} | {beside.per_s:.1f} | {beside.p50_ms:.0f} | "
            f"{beside.p99_ms:.0f} | {beside.errors} |",
            "",
            f"Ratio: {beside.per_s / alone.per_s:.2f}.",
        ]
        first_row = next((r for r in rows if r["model"] == args.first), None)
        if first_row is not None:
            again = first_row["served"].per_s
            spread = abs(again - alone.per_s) / max(again, alone.per_s)
            lines += [
                "",
                f"Noise in this run: `{args.first}` served alone measured {again:.1f} req/s in "
                f"the table above and {alone.per_s:.1f} req/s here ({spread:.0%} apart, same "
                "configuration). A ratio within that spread is not a measured slowdown.",
            ]
        if args.load_start > (os.cpu_count() or 1):
            lines += [
                "",
                f"The machine was shared while this ran (load average {args.load_start:.1f} on "
                f"{os.cpu_count()} cores): absolute numbers are far below an idle machine's; "
                "re-run `make bench` on a quiet machine before drawing conclusions.",
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from bench.__main__ import payloads

    parser = argparse.ArgumentParser(prog="python -m bench.models")
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--raw-seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-idle", action="store_true", help="skip the second-model rows")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks-models.md"))
    args = parser.parse_args(argv)
    args.load_start = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="vq-bench-models-"))
    os.environ.setdefault("BENTOML_HOME", str(workdir / "bentoml"))
    data = payloads()
    rows = []
    names = []
    for arch in args.architectures.split(","):
        stored = import_architecture(arch, workdir)
        names.append(stored.name)
        prep = stored.metadata["preprocessing"]
        raw = raw_rate(stored, data, args.raw_seconds)
        served = served_load([stored.name], data, args.concurrency, args.seconds, workdir)
        print(f"  {arch}: raw {raw:.1f} img/s, served {served.per_s:.1f} req/s", flush=True)
        rows.append(
            {
                "arch": arch,
                "model": stored.name,
                "prep": f"{prep['resize']}/{prep['crop']} {prep['interpolation']}",
                "raw": raw,
                "served": served,
            }
        )
    idle: dict[str, LoadResult] = {}
    if not args.no_idle and len(names) > 1:
        args.first, args.second = names[0], names[-1]
        idle["alone"] = served_load([args.first], data, args.concurrency, args.seconds, workdir)
        idle["beside"] = served_load(
            [args.first, args.second], data, args.concurrency, args.seconds, workdir
        )
    output = Path(args.output)
    output.write_text(render(rows, idle, args))
    print(f"bench.models: wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
