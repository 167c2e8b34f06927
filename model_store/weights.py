"""Build ResNet18 weights from a spec and name their origin.

Spec (``VQ_WEIGHTS``)      origin recorded with the model and shown in every result
``imagenet1k_v1``          ``imagenet1k_v1`` (torchvision's download; needs network once)
a checkpoint path          ``file:<sha256 of the file>``
``random``                 ``random-init:seed=<n>`` (a demo/test model: predictions mean nothing)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

IMAGENET = "imagenet1k_v1"
RANDOM = "random"


class WeightsError(Exception):
    """The requested weights cannot be loaded (unreachable, unreadable or mismatched)."""


def is_demo(origin: str) -> bool:
    """Return True when ``origin`` names untrained, demo-only weights."""
    return origin.startswith("random-init")


def random_origin(seed: int) -> str:
    return f"random-init:seed={seed}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def expected_origin(spec: str, seed: int) -> str:
    """Return the origin a spec would produce, without loading anything heavy."""
    if spec == IMAGENET:
        return IMAGENET
    if spec == RANDOM:
        return random_origin(seed)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    return f"file:{file_sha256(path)}"


def _extract_state_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) for k in obj):
            # checkpoints saved from DataParallel prefix every key with "module."
            return {k.removeprefix("module."): v for k, v in obj.items()}
    raise WeightsError("checkpoint does not hold a ResNet18 state_dict")


def build_state_dict(spec: str, seed: int = 0) -> tuple[dict[str, Any], str]:
    """Return (state_dict, origin) for a weights spec; raise WeightsError with a clear reason."""
    import torch
    from torchvision.models import ResNet18_Weights, resnet18

    if spec == IMAGENET:
        try:
            model = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)
        except Exception as exc:  # urllib/hub errors vary by platform
            raise WeightsError(
                "could not download torchvision's IMAGENET1K_V1 weights "
                f"({type(exc).__name__}); set VQ_WEIGHTS to a local checkpoint path, "
                "or VQ_WEIGHTS=random for an explicit demo model"
            ) from exc
        return model.state_dict(), IMAGENET
    if spec == RANDOM:
        torch.manual_seed(seed)
        return resnet18(weights=None).state_dict(), random_origin(seed)

    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}); it must be a "
            "torch.save()d ResNet18 state_dict"
        ) from exc
    state_dict = _extract_state_dict(loaded)
    model = resnet18(weights=None)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise WeightsError(
            f"checkpoint {path} does not match ResNet18 (1000 classes): {' '.join(first)}"
        ) from exc
    return model.state_dict(), f"file:{file_sha256(path)}"
