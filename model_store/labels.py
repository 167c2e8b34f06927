"""ImageNet-1k class labels, shipped inside torchvision (no download)."""

from __future__ import annotations

import functools


@functools.cache
def imagenet_categories() -> tuple[str, ...]:
    """Return the 1000 ImageNet class names in index order."""
    from torchvision.models import ResNet18_Weights

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
