"""Decode an upload and crop it to its model's uint8 input: the one implementation the front
(``/predict``, ``/v1`` protocols) and the workers' direct path to the classifier share."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model_store.preprocess import (
    IMAGENET_PREPROCESSING,
    RESIZE_SIZE,
    Preprocessing,
    to_model_input,
)
from visionqueue.core.errors import InvalidImage
from visionqueue.core.images import DRAFT_SCALE_KEY, check_dimensions, decode_image

# Draft decoding keeps the shorter side at least twice the resize target, so the
# antialiased resize still averages over real pixels: max 3/255 from the exact crop on a
# 12 MP photo (docs/performance.md). Only JPEGs at least twice the resize change.
DRAFT_MIN_SIDE = 2 * RESIZE_SIZE


def prepare_crop(
    data: bytes | Path,
    max_pixels: int,
    jpeg_draft: bool = False,
    prep: Preprocessing = IMAGENET_PREPROCESSING,
) -> tuple[np.ndarray, str]:
    """Decode an upload; return its ``(crop, crop, 3)`` uint8 model input and how it was decoded.

    The label is ``exact`` (torchvision's preprocessing, bit for bit) or ``jpeg-draft-1/N``
    when ``jpeg_draft`` let the JPEG decoder reduce a large photo by N first.
    """
    if isinstance(data, Path):  # the framework's spooled upload: read it in this thread too
        data = data.read_bytes()
    image = decode_image(data, max_pixels, 2 * prep.resize if jpeg_draft else 0)
    scale = int(image.info.get(DRAFT_SCALE_KEY, 1))
    return to_model_input(image, prep), ("exact" if scale == 1 else f"jpeg-draft-1/{scale}")


def prepare_pixels(
    pixels: np.ndarray, max_pixels: int, prep: Preprocessing = IMAGENET_PREPROCESSING
) -> tuple[np.ndarray, str]:
    """Crop decoded ``(H, W, 3)`` uint8 RGB pixels as ``prepare_crop`` crops a decoded image."""
    from PIL import Image

    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise InvalidImage("decoded pixels must be uint8 of shape (height, width, 3)")
    check_dimensions(int(pixels.shape[1]), int(pixels.shape[0]), max_pixels)
    image = Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")
    return to_model_input(image, prep), "exact"


# the crop sizes a stored model may declare (``Preprocessing``'s bounds)
MIN_CROP_SIDE, MAX_CROP_SIDE = 8, 2048


def check_crop_batch(crops: np.ndarray) -> np.ndarray:
    """Return ``crops`` if they are ``(N, S, S, 3)`` with a side a model may use, else raise.

    The classifier's batch APIs validate each request with it before the request joins a
    batch: a malformed one then gets its own 400 instead of failing the merged batch.
    """
    shape = tuple(int(n) for n in crops.shape)
    if (
        len(shape) != 4
        or shape[3] != 3
        or shape[1] != shape[2]
        or not MIN_CROP_SIDE <= shape[1] <= MAX_CROP_SIDE
    ):
        raise ValueError(
            f"crops must be (N, S, S, 3) uint8 with {MIN_CROP_SIDE} <= S <= {MAX_CROP_SIDE}, "
            f"got {shape}"
        )
    return crops
