"""``POST /predict``: validate an upload, crop it, classify it through the batched service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from model_store.inference import top_k as top_k_rows
from model_store.preprocess import RESIZE_SIZE, to_model_input
from model_store.weights import is_demo
from visionqueue.core.errors import ImageTooLarge, InvalidImage, Unprocessable
from visionqueue.core.images import DRAFT_SCALE_KEY, decode_image

MAX_TOP_K = 20

ClassifyFn = Callable[[np.ndarray], Awaitable[np.ndarray]]  # (224, 224, 3) crop -> probs
# (N, 224, 224, 3) crops -> (N, classes) probabilities, the crops classified together
ClassifyManyFn = Callable[[np.ndarray], Awaitable[np.ndarray]]


def check_top_k(value: Any) -> int:
    """Return ``top_k`` if it is an integer in 1..20, else raise a 422."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
        raise Unprocessable(
            f"top_k must be an integer between 1 and {MAX_TOP_K}", code="invalid_top_k"
        )
    return value


# Draft decoding keeps the shorter side at least twice the resize target, so the
# antialiased resize still averages over real pixels: max 3/255 from the exact crop on a
# 12 MP photo (docs/performance.md). Only JPEGs at least 1024 px on the shorter side change.
DRAFT_MIN_SIDE = 2 * RESIZE_SIZE


def prepare_crop(
    data: bytes | Path, max_pixels: int, jpeg_draft: bool = False
) -> tuple[np.ndarray, str]:
    """Decode an upload; return its ``(224, 224, 3)`` uint8 model input and how it was decoded.

    The label is ``exact`` (torchvision's preprocessing, bit for bit) or ``jpeg-draft-1/N``
    when ``jpeg_draft`` let the JPEG decoder reduce a large photo by N first.
    """
    if isinstance(data, Path):  # the framework's spooled upload: read it in this thread too
        data = data.read_bytes()
    image = decode_image(data, max_pixels, DRAFT_MIN_SIDE if jpeg_draft else 0)
    scale = int(image.info.get(DRAFT_SCALE_KEY, 1))
    return to_model_input(image), ("exact" if scale == 1 else f"jpeg-draft-1/{scale}")


def prepare_pixels(pixels: np.ndarray, max_pixels: int) -> tuple[np.ndarray, str]:
    """Crop decoded ``(H, W, 3)`` uint8 RGB pixels as ``prepare_crop`` crops a decoded image."""
    from PIL import Image

    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise InvalidImage("decoded pixels must be uint8 of shape (height, width, 3)")
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    if height < 1 or width < 1:
        raise InvalidImage("the image has no pixels")
    if height * width > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height}; the limit is {max_pixels} pixels",
            details={"width": width, "height": height, "max_pixels": max_pixels},
        )
    image = Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")
    return to_model_input(image), "exact"


def model_block(model_info: dict[str, Any]) -> dict[str, Any]:
    """Describe the model that answered, loudly when it is a demo model."""
    block: dict[str, Any] = {
        "tag": model_info["tag"],
        "weights": model_info["weights"],
        "demo": is_demo(model_info["weights"]),
    }
    if block["demo"]:
        block["warning"] = (
            "random-init weights: this is an untrained demo model and its predictions mean nothing"
        )
    return block


async def classify_upload(
    data: bytes | Path,
    k: int,
    *,
    classify: ClassifyFn,
    model_info: dict[str, Any],
    max_pixels: int,
    limiter: anyio.CapacityLimiter,
    jpeg_draft: bool = False,
) -> dict[str, Any]:
    """Run one upload through preprocessing and the batched classifier; build the response."""
    started = time.perf_counter()
    crop, preprocessing = await anyio.to_thread.run_sync(
        prepare_crop, data, max_pixels, jpeg_draft, limiter=limiter
    )
    probs = await classify(crop)
    predictions = top_k_rows(probs, model_info["labels"], k)
    return {
        "predictions": predictions,
        "model": model_block(model_info),
        "processing_time": round(time.perf_counter() - started, 6),
        "preprocessing": preprocessing,
    }


async def classify_images(
    images: list[bytes] | list[np.ndarray],
    *,
    classify_many: ClassifyManyFn,
    max_pixels: int,
    limiter: anyio.CapacityLimiter,
    jpeg_draft: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """Preprocess encoded images (or decoded pixels) and classify them in one batch.

    Returns the ``(N, classes)`` probabilities and how each image was preprocessed. One
    bad image fails the whole request, as one bad ``/predict`` upload does.
    """

    async def prepare(item: bytes | np.ndarray) -> tuple[np.ndarray, str]:
        if isinstance(item, np.ndarray):
            return await anyio.to_thread.run_sync(prepare_pixels, item, max_pixels, limiter=limiter)
        return await anyio.to_thread.run_sync(
            prepare_crop, item, max_pixels, jpeg_draft, limiter=limiter
        )

    # the first bad image answers the request; the others' threads finish on their own
    crops = await asyncio.gather(*(prepare(item) for item in images))
    probs = await classify_many(np.stack([crop for crop, _ in crops]))
    return probs, [how for _, how in crops]
