"""Preprocessing equal to torchvision's classification presets, split at the uint8 crop.

torchvision's ``ImageClassification`` preset resizes the PIL image (shorter side ``resize``,
its interpolation, antialiased), centre crops ``crop``, converts to float in [0, 1] and
normalises with ``mean``/``std``. We split it at the uint8 crop: the front does the PIL part
(``to_model_input``) and ships ``crop x crop x 3`` uint8 per image; the classifier does the
float part (``normalize_batch`` in ``model_store.inference``). The split is exact because
the preset converts to float only after cropping.

Every stored model carries its own ``Preprocessing`` (the architecture's preset unless the
import overrode it); models imported before that carry none and get ResNet18's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from visionqueue.core.errors import ImageTooLarge

RESIZE_SIZE = 256
CROP_SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


class PreprocessingError(ValueError):
    """A preprocessing setting is out of range (the message names the setting)."""


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, centre crop, then normalise: torchvision's preset, exactly."""

    resize: int = RESIZE_SIZE
    crop: int = CROP_SIZE
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise PreprocessingError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                f"not {self.interpolation!r}"
            )
        if not 8 <= self.crop <= 2048 or not 8 <= self.resize <= 4096:
            raise PreprocessingError(
                f"resize ({self.resize}) and crop ({self.crop}) must be between 8 and 2048/4096"
            )
        if self.crop > self.resize:
            raise PreprocessingError(
                f"crop ({self.crop}) must not exceed resize ({self.resize}): the centre crop "
                "is taken from the resized image"
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3:
                raise PreprocessingError(
                    f"{name} needs 3 values (R,G,B), got {len(values)}: {list(values)}"
                )
        if any(not (math.isfinite(v) and v > 0) for v in self.std):
            raise PreprocessingError(
                f"std values must be positive (a zero divides by zero): {list(self.std)}"
            )
        if any(not (math.isfinite(v) and 0 <= v <= 1) for v in self.mean):
            raise PreprocessingError(
                f"mean values must lie in [0, 1] (pixels are scaled to [0, 1]): {list(self.mean)}"
            )

    def to_spec(self) -> dict[str, Any]:
        """Describe it as stored with the model and shown by ``/v1/models``."""
        spec = asdict(self)
        spec["mean"], spec["std"] = list(self.mean), list(self.std)
        spec.update(
            {
                "center_crop": self.crop,
                "antialias": True,
                "input": "RGB, EXIF orientation applied",
            }
        )
        return spec

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> Preprocessing:
        """Read a stored spec (the seed's ResNet18 spec too)."""
        if not spec:
            return cls()
        return cls(
            resize=int(spec.get("resize", RESIZE_SIZE)),
            crop=int(spec.get("crop", spec.get("center_crop", CROP_SIZE))),
            mean=tuple(float(v) for v in spec.get("mean", MEAN)),  # type: ignore[arg-type]
            std=tuple(float(v) for v in spec.get("std", STD)),  # type: ignore[arg-type]
            interpolation=str(spec.get("interpolation", "bilinear")),
        )

    @property
    def front_key(self) -> tuple[int, int, str]:
        """What the front does with it; two versions with equal keys take the same crops."""
        return (self.resize, self.crop, self.interpolation)


IMAGENET_PREPROCESSING = Preprocessing()

# the seed's spec, kept for the default ResNet18's metadata
PREPROCESSING_SPEC: dict[str, Any] = {
    "reference": "torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()",
    **IMAGENET_PREPROCESSING.to_spec(),
}


def preset_for_architecture(arch: str) -> Preprocessing:
    """Return torchvision's preset for ``arch`` (its default weights' transforms, no download)."""
    from torchvision.models import get_model_weights

    try:
        preset = get_model_weights(arch).DEFAULT.transforms()
    except (ValueError, AttributeError, KeyError):
        return IMAGENET_PREPROCESSING
    interpolation = str(getattr(preset.interpolation, "value", "bilinear"))
    return Preprocessing(
        resize=int(preset.resize_size[0]),
        crop=int(preset.crop_size[0]),
        mean=tuple(float(v) for v in preset.mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in preset.std),  # type: ignore[arg-type]
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
    )


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


# The resize scales the shorter side to ``resize``: a 1x1500 image (under any pixel cap)
# becomes 256x384000, 0.3 GB. Its output is bounded instead: 16 MP (aspect ratios up to
# 256:1 at resize 256), or a 4:1 image at the model's own resize when that is larger.
MIN_RESIZED_PIXELS_LIMIT = 1 << 24


def resized_pixels_limit(resize: int) -> int:
    """Return the most pixels the resize may produce for a model that resizes to ``resize``."""
    return max(MIN_RESIZED_PIXELS_LIMIT, 4 * resize * resize)


def check_resized_size(width: int, height: int, prep: Preprocessing) -> tuple[int, int]:
    """Return the resized (width, height); refuse (422) an image whose resize is too large."""
    new_w, new_h = resize_shorter_side(width, height, size=prep.resize)
    limit = resized_pixels_limit(prep.resize)
    if new_w * new_h > limit:
        raise ImageTooLarge(
            f"image is {width}x{height}: resized to {prep.resize} on its shorter side it "
            f"would be {new_w}x{new_h}, over the limit of {limit} pixels (too elongated)",
            code="image_too_elongated",
            details={"width": width, "height": height, "max_resized_pixels": limit},
        )
    return new_w, new_h


def to_model_input(image: Image.Image, prep: Preprocessing = IMAGENET_PREPROCESSING) -> np.ndarray:
    """Resize and centre-crop an RGB image to a ``(crop, crop, 3)`` uint8 array."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode}")
    new_w, new_h = check_resized_size(*image.size, prep)
    resized = image.resize((new_w, new_h), INTERPOLATIONS[prep.interpolation])
    cropped = resized.crop(center_crop_box(new_w, new_h, prep.crop))
    return np.asarray(cropped, dtype=np.uint8)
