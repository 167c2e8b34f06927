"""Preprocessing equal to ``torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()``.

torchvision's preset resizes the PIL image (shorter side 256, bilinear, antialiased), centre
crops 224, converts to float in [0, 1] and normalises. We split it at the uint8 crop: the
front does the PIL part (``to_model_input``) and ships 150 KB of uint8 per image; the
classifier does the float part (``normalize_batch`` in ``model_store.inference``). The split
is exact because the preset converts to float only after cropping.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

RESIZE_SIZE = 256
CROP_SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

PREPROCESSING_SPEC: dict[str, Any] = {
    "reference": "torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()",
    "resize": RESIZE_SIZE,
    "interpolation": "bilinear",
    "antialias": True,
    "center_crop": CROP_SIZE,
    "mean": list(MEAN),
    "std": list(STD),
    "input": "RGB, EXIF orientation applied",
}


def resize_shorter_side(width: int, height: int, size: int = RESIZE_SIZE) -> tuple[int, int]:
    """Return the (width, height) torchvision's ``F.resize(img, size)`` produces."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop_box(width: int, height: int, size: int = CROP_SIZE) -> tuple[int, int, int, int]:
    """Return the crop box of torchvision's ``F.center_crop`` for an image at least ``size``."""
    top = round((height - size) / 2.0)
    left = round((width - size) / 2.0)
    return left, top, left + size, top + size


def to_model_input(image: Image.Image) -> np.ndarray:
    """Resize and centre-crop an RGB image to a ``(224, 224, 3)`` uint8 array."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode}")
    new_w, new_h = resize_shorter_side(*image.size)
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    cropped = resized.crop(center_crop_box(new_w, new_h))
    return np.asarray(cropped, dtype=np.uint8)
