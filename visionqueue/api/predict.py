"""``POST /predict``: validate an upload, crop it for its model, classify it on that model's queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from model_store.inference import top_k as top_k_rows
from model_store.preprocess import (
    IMAGENET_PREPROCESSING,
    RESIZE_SIZE,
    Preprocessing,
    to_model_input,
)
from model_store.weights import is_demo
from visionqueue.api.served_models import Answer, ServedModels
from visionqueue.core.errors import ImageTooLarge, InvalidImage, Unprocessable
from visionqueue.core.images import DRAFT_SCALE_KEY, decode_image

MAX_TOP_K = 20


def check_top_k(value: Any) -> int:
    """Return ``top_k`` if it is an integer in 1..20, else raise a 422."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
        raise Unprocessable(
            f"top_k must be an integer between 1 and {MAX_TOP_K}", code="invalid_top_k"
        )
    return value


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
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    if height < 1 or width < 1:
        raise InvalidImage("the image has no pixels")
    if height * width > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height}; the limit is {max_pixels} pixels",
            details={"width": width, "height": height, "max_pixels": max_pixels},
        )
    image = Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")
    return to_model_input(image, prep), "exact"


def model_block(name: str, version: dict[str, Any]) -> dict[str, Any]:
    """Describe the model version that answered, loudly when it is a demo model."""
    block: dict[str, Any] = {
        "name": name,
        "tag": version["tag"],
        "weights": version["weights"],
        "architecture": version.get("architecture"),
        "demo": is_demo(version["weights"]),
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
    served: ServedModels,
    model: str | None,
    max_pixels: int,
    limiter: anyio.CapacityLimiter,
    jpeg_draft: bool = False,
    on_answer: Callable[[float, Answer], None] | None = None,
) -> dict[str, Any]:
    """Run one upload through the model's preprocessing and batched queue; build the response.

    The crop follows the current version's preprocessing; if a promotion swapped in a
    version that crops differently before the batch ran, the image is cropped again for it.
    """
    started = time.perf_counter()
    name = served.get(model).name
    prep = await served.preprocessing(name)
    for _ in range(3):
        crop, preprocessing = await anyio.to_thread.run_sync(
            prepare_crop, data, max_pixels, jpeg_draft, prep, limiter=limiter
        )
        sent = time.perf_counter()
        answer = await served.classify(name, crop)
        if on_answer is not None:
            on_answer(time.perf_counter() - sent, answer)
        used = Preprocessing.from_spec(answer.version["preprocessing"])
        if used.front_key == prep.front_key:
            break
        prep = used
    predictions = top_k_rows(answer.probs, answer.version["labels"], k)
    return {
        "predictions": predictions,
        "model": model_block(name, answer.version),
        "processing_time": round(time.perf_counter() - started, 6),
        "preprocessing": preprocessing,
    }


async def classify_images(
    images: list[bytes] | list[np.ndarray],
    *,
    served: ServedModels,
    model: str | None,
    max_pixels: int,
    limiter: anyio.CapacityLimiter,
    jpeg_draft: bool = False,
) -> tuple[np.ndarray, list[str], dict[str, Any], np.ndarray]:
    """Preprocess encoded images (or decoded pixels) and classify them together on ``model``.

    Returns the ``(N, classes)`` probabilities, how each image was preprocessed, the
    version that answered and each row's batch forward seconds. One bad image fails the whole request, as one bad ``/predict``
    upload does. Images cropped for a version a promotion replaced meanwhile are redone.
    """
    name = served.get(model).name
    prep = await served.preprocessing(name)

    async def prepare(item: bytes | np.ndarray) -> tuple[np.ndarray, str]:
        if isinstance(item, np.ndarray):
            return await anyio.to_thread.run_sync(
                prepare_pixels, item, max_pixels, prep, limiter=limiter
            )
        return await anyio.to_thread.run_sync(
            prepare_crop, item, max_pixels, jpeg_draft, prep, limiter=limiter
        )

    for _ in range(3):
        # the first bad image answers the request; the others' threads finish on their own
        crops = await asyncio.gather(*(prepare(item) for item in images))
        probs, version, forward_s = await served.classify_many(
            name, np.stack([c for c, _ in crops])
        )
        used = Preprocessing.from_spec(version["preprocessing"])
        if used.front_key == prep.front_key:
            break
        prep = used
    return probs, [how for _, how in crops], version, forward_s
