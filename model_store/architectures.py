"""torchvision classification architectures by builder name, sized by a checkpoint's head."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from model_store.weights import WeightsError


@functools.cache
def classification_architectures() -> tuple[str, ...]:
    """Return the builder names of torchvision's image classification models."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def check_architecture(arch: str) -> str:
    """Return ``arch`` if torchvision has such a classification builder, else say which do."""
    names = classification_architectures()
    if arch not in names:
        close = [n for n in names if n.split("_")[0] == arch.split("_")[0]][:8]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise WeightsError(
            f"unknown architecture {arch!r}{hint}: --arch takes a torchvision classification "
            f"builder name such as resnet50, mobilenet_v3_large, efficientnet_b0, convnext_tiny, "
            "vit_b_16"
        )
    return arch


def _builder_kwargs(arch: str) -> dict[str, Any]:
    # these builders only take auxiliary heads with their pretrained weights
    if arch in ("googlenet", "inception_v3"):
        return {"aux_logits": False, "init_weights": False}
    return {}


def head_keys(arch: str) -> list[str]:
    """Return the state_dict keys whose shape depends on the number of classes."""
    import torch
    from torchvision.models import get_model

    with torch.device("meta"):  # shapes only: no memory, no init cost
        default = get_model(arch, weights=None, **_builder_kwargs(arch)).state_dict()
        other = get_model(arch, weights=None, num_classes=7, **_builder_kwargs(arch)).state_dict()
    return [k for k, v in default.items() if k in other and other[k].shape != v.shape]


def num_classes_of(arch: str, state_dict: dict[str, Any], path: Path) -> int:
    """Read the class count from the checkpoint's classification head."""
    keys = head_keys(arch)
    missing = [k for k in keys if k not in state_dict]
    if not keys or missing:
        raise WeightsError(
            f"checkpoint {path} does not fit --arch {arch}: it has no {', '.join(missing or keys)} "
            f"(its first keys: {', '.join(list(state_dict)[:4])})"
        )
    counts = {k: int(state_dict[k].shape[0]) for k in keys}
    if len(set(counts.values())) != 1:
        raise WeightsError(
            f"checkpoint {path} does not fit --arch {arch}: its head layers disagree on the "
            f"number of classes ({counts})"
        )
    return next(iter(counts.values()))


def build_module(arch: str, state_dict: dict[str, Any], path: Path) -> tuple[Any, int]:
    """Return (eval-mode module with the checkpoint's weights, number of classes)."""
    from torchvision.models import get_model

    num_classes = num_classes_of(arch, state_dict, path)
    module = get_model(arch, weights=None, num_classes=num_classes, **_builder_kwargs(arch))
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[:3])
        raise WeightsError(
            f"checkpoint {path} does not fit --arch {arch} ({num_classes} classes): {detail[:400]}"
        ) from None
    return module.eval(), num_classes


def build_stored(arch: str, num_classes: int, state_dict: dict[str, Any]) -> Any:
    """Rebuild a stored state_dict model (already verified at import)."""
    from torchvision.models import get_model

    module = get_model(arch, weights=None, num_classes=num_classes, **_builder_kwargs(arch))
    module.load_state_dict(state_dict, strict=True)
    return module.eval()
