"""``python -m model_store``: import classifiers into the BentoML store, list, promote, delete.

python -m model_store import NAME --weights FILE [--arch ARCH] [--labels FILE] [--resize N]
                            [--crop N] [--mean R,G,B] [--std R,G,B] [--interpolation I]
python -m model_store import [--weights imagenet1k_v1|PATH|random]   # the default ResNet18
python -m model_store list [NAME]
python -m model_store import NAME --from NAME:TAG --quantize int8 --calibration DIR [--holdout DIR]
                            [--recipe R]
python -m model_store promote NAME:TAG [--force]
python -m model_store delete NAME:TAG
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_store.weights import WeightsError
from visionqueue.core.errors import VQError

if TYPE_CHECKING:
    from model_store.promotions import PromotionRecord
    from model_store.shared import ModelArchives


def promotion_record() -> PromotionRecord:
    """The deployment's promotion record: the database every classifier replica reads."""
    from persistence.promotions_repo import DatabasePromotions
    from visionqueue.core.settings import get_settings

    return DatabasePromotions(get_settings().database_url)


def model_archives() -> ModelArchives | None:
    """The shared bucket of model versions (``VQ_S3_MODELS_BUCKET``), or None."""
    from persistence.model_bucket import build_model_bucket
    from visionqueue.core.settings import get_settings

    bucket = build_model_bucket(get_settings())
    if bucket is not None:
        bucket.ensure_bucket()
    return bucket


def add_import_arguments(imp: argparse.ArgumentParser, with_json: bool = True) -> None:
    """The ``import`` flags, shared with ``visionqueue import-model``."""
    imp.add_argument(
        "name", nargs="?", default=None, help="model name in the store (default: $VQ_MODEL_NAME)"
    )
    imp.add_argument(
        "--weights",
        default=None,
        help="a state_dict checkpoint, TorchScript archive or ONNX file (detected by content); "
        "for the default ResNet18 also imagenet1k_v1 | random (default: $VQ_WEIGHTS)",
    )
    imp.add_argument(
        "--arch", default=None, help="torchvision builder of a state_dict (default resnet18)"
    )
    imp.add_argument(
        "--labels", type=Path, default=None, help="text lines, JSON list or index_to_name.json"
    )
    imp.add_argument("--resize", type=int, default=None, help="shorter side before the crop")
    imp.add_argument("--crop", type=int, default=None, help="centre crop (the input size)")
    imp.add_argument("--mean", default=None, help="normalisation mean R,G,B")
    imp.add_argument("--std", default=None, help="normalisation std R,G,B")
    imp.add_argument("--interpolation", choices=("bilinear", "bicubic", "nearest"), default=None)
    imp.add_argument("--seed", type=int, default=None, help="seed for random weights")
    imp.add_argument("--name", dest="name_flag", default=None, help=argparse.SUPPRESS)
    imp.add_argument(
        "--if-missing", action="store_true", help="reuse a stored model with the same weights"
    )
    imp.add_argument(
        "--fallback-random",
        action="store_true",
        help="offline and no checkpoint: fall back to a seeded random-init demo model",
    )
    imp.add_argument(
        "--from",
        dest="source",
        default=None,
        help="with --quantize: the stored fp32 version NAME:TAG to quantize",
    )
    imp.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="store an int8 version of --from (static quantization, --recipe)",
    )
    imp.add_argument(
        "--recipe",
        default=None,
        help="with --quantize: how to make the int8 graph (RECIPES in model_store/quantize.py, "
        "default DEFAULT_RECIPE)",
    )
    imp.add_argument(
        "--calibration", type=Path, default=None, help="with --quantize: a folder of images"
    )
    imp.add_argument(
        "--holdout",
        type=Path,
        default=None,
        help="with --quantize: held-out images for the agreement report (default: every "
        "2nd calibration image, then not calibrated on)",
    )
    if with_json:  # `visionqueue` has its own --json
        imp.add_argument("--json", action="store_true", help="print the result as JSON")


def _is_custom(args: argparse.Namespace) -> bool:
    if args.if_missing or args.fallback_random:  # make import-model / make run: VQ_WEIGHTS
        return False
    flags = (args.arch, args.labels, args.resize, args.crop, args.mean, args.std)
    special = args.weights in (None, "imagenet1k_v1", "random")
    return not special or any(v is not None for v in (*flags, args.interpolation))


def run_import(args: argparse.Namespace) -> int:
    from model_store.shared import fetch, publish
    from model_store.store import ensure_model, import_model
    from visionqueue.core.settings import get_settings

    cfg = get_settings().model
    name = args.name or args.name_flag or cfg.model_name
    if args.quantize or args.source or args.calibration:
        return run_quantize(name, args)
    archives = model_archives()
    try:
        if archives is not None:  # --if-missing also reuses a version another host imported
            fetch(name, archives)
        if args.weights is not None and _is_custom(args):
            stored = _import_custom(name, args)
        else:
            spec = args.weights or cfg.weights
            seed = cfg.random_seed if args.seed is None else args.seed
            if args.if_missing or args.fallback_random:
                stored = ensure_model(spec, seed, name, allow_fallback=args.fallback_random)
            else:
                stored = import_model(spec, seed, name)
        if archives is not None:
            publish(stored.tag, archives)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = stored.summary()
    if args.json:
        print(json.dumps({"tag": stored.tag, "weights": stored.weights_origin, **summary}))
    else:
        prep = summary["preprocessing"]
        print(
            f"{stored.tag}  {summary['architecture']}  {summary['classes']} classes  "
            f"weights={stored.weights_origin}  resize={prep['resize']} crop={prep['crop']} "
            f"{prep['interpolation']}"
        )
        if stored.demo:
            print(
                "WARNING: random-init weights: a demo model whose predictions mean nothing",
                file=sys.stderr,
            )
    return 0


def run_quantize(name: str, args: argparse.Namespace) -> int:
    """``import NAME --from NAME:TAG --quantize int8 --calibration DIR``: print the report."""
    from model_store.quantize import quantize_version
    from model_store.shared import fetch, publish

    try:
        if not (args.quantize and args.source and args.calibration):
            raise WeightsError("--quantize int8 needs --from NAME:TAG and --calibration DIR")
        if args.weights is not None:
            raise WeightsError("--quantize takes the stored version --from, not --weights")
        archives = model_archives()
        if archives is not None:  # the fp32 source may have been imported on another host
            fetch(args.source, archives)
        recipe = {"recipe": args.recipe} if args.recipe else {}
        stored, report = quantize_version(
            name, args.source, args.calibration, args.holdout, **recipe
        )
        if archives is not None:  # every classifier replica can load the int8 version
            publish(stored.tag, archives)
    except (WeightsError, VQError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "json", False):
        print(json.dumps({"tag": stored.tag, **stored.summary()}))
        return 0
    print(f"{stored.tag}  int8 of {args.source}")
    print(
        f"agreement with fp32 on {report.images} held-out images ({report.holdout}): "
        f"top-1 {report.top1:.2%}, top-5 overlap {report.top5_overlap:.2%}, "
        f"max prob diff {report.max_prob_diff:.4f} (on {report.runtime})"
    )
    return 0


def _import_custom(name: str, args: argparse.Namespace) -> Any:
    from model_store.importer import PreprocessingOverrides, import_classifier, parse_triplet

    if args.weights is None:
        raise WeightsError("--weights FILE is required")
    overrides = PreprocessingOverrides(
        resize=args.resize,
        crop=args.crop,
        mean=parse_triplet(args.mean, "--mean") if args.mean is not None else None,
        std=parse_triplet(args.std, "--std") if args.std is not None else None,
        interpolation=args.interpolation,
    )
    path = Path(args.weights).expanduser()
    return import_classifier(name, path, arch=args.arch, labels=args.labels, overrides=overrides)


def run_list(args: argparse.Namespace) -> int:
    from model_store.promotions import promoted_tags
    from model_store.shared import fetch
    from model_store.store import list_versions

    try:
        archives = model_archives()
        if archives is not None and args.name:
            fetch(args.name, archives)
        promoted = promoted_tags(promotion_record())
    except VQError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    versions = list_versions(args.name)
    rows = [{**v.summary(), "promoted": promoted.get(v.name) == v.tag} for v in versions]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no models in the store" + (f" named {args.name}" if args.name else ""))
    for row in rows:
        mark = "*" if row["promoted"] else " "
        print(
            f"{mark} {row['tag']:<40} {row['architecture']:<34} {row['classes']:>5} classes  "
            f"{row['weights'][:24]}  {row['created_at'][:19]}"
        )
    if any(r["promoted"] for r in rows):
        print("(* = promoted: the version served for its name)")
    return 0


def run_promote(args: argparse.Namespace) -> int:
    from model_store.promotions import promote
    from model_store.shared import fetch

    try:
        archives = model_archives()
        if archives is not None:  # a version imported on another host
            fetch(args.tag, archives)
        record = promote(args.tag, promotion_record(), force=getattr(args, "force", False))
    except (WeightsError, VQError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(record))
    else:
        previous = record.get("previous") or "(the configured version)"
        print(
            f"promoted {record['tag']} (was {previous}); classifier workers switch within seconds"
        )
    return 0


def run_delete(args: argparse.Namespace) -> int:
    from model_store.promotions import promoted_tags
    from model_store.store import delete_version, get_model

    try:
        stored = get_model(args.tag)
        if promoted_tags(promotion_record()).get(stored.name) == stored.tag:
            raise WeightsError(
                f"{stored.tag} is the promoted version of {stored.name}: promote another "
                "version first"
            )
        delete_version(stored.tag)
    except (WeightsError, VQError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"deleted {stored.tag}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="import a classifier into the BentoML model store")
    add_import_arguments(imp)
    imp.set_defaults(func=run_import)
    lst = sub.add_parser("list", help="list stored versions, newest first")
    lst.add_argument("name", nargs="?", default=None)
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=run_list)
    pro = sub.add_parser("promote", help="serve NAME:TAG for NAME (rolling back is the same)")
    pro.add_argument("tag")
    pro.add_argument("--json", action="store_true")
    pro.add_argument("--force", action="store_true", help="promote an int8 version below the bar")
    pro.set_defaults(func=run_promote)
    dele = sub.add_parser("delete", help="delete a stored version")
    dele.add_argument("tag")
    dele.set_defaults(func=run_delete)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
