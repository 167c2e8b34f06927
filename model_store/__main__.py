"""``python -m model_store import --weights SPEC``: put ResNet18 into the BentoML store."""

from __future__ import annotations

import argparse
import json
import sys

from model_store.weights import WeightsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_store")
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="save ResNet18 weights into the BentoML model store")
    imp.add_argument(
        "--weights",
        default=None,
        help="imagenet1k_v1 | CHECKPOINT_PATH | random (default: $VQ_WEIGHTS or imagenet1k_v1)",
    )
    imp.add_argument("--seed", type=int, default=None, help="seed for random weights")
    imp.add_argument("--name", default=None, help="model name in the store")
    imp.add_argument(
        "--if-missing", action="store_true", help="reuse a stored model with the same weights"
    )
    imp.add_argument(
        "--fallback-random",
        action="store_true",
        help="offline and no checkpoint: fall back to a seeded random-init demo model",
    )
    imp.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    from model_store.store import ensure_model, import_model
    from visionqueue.core.settings import get_settings

    cfg = get_settings().model
    spec = args.weights or cfg.weights
    seed = cfg.random_seed if args.seed is None else args.seed
    name = args.name or cfg.model_name
    try:
        if args.if_missing or args.fallback_random:
            stored = ensure_model(spec, seed, name, allow_fallback=args.fallback_random)
        else:
            stored = import_model(spec, seed, name)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"tag": stored.tag, "weights": stored.weights_origin}))
    else:
        print(f"{stored.tag}  weights={stored.weights_origin}")
        if stored.demo:
            print(
                "WARNING: random-init weights: a demo model whose predictions mean nothing",
                file=sys.stderr,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
