"""``POST /predict``: validate an upload, crop it, classify it through the batched service."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from model_store.inference import top_k as top_k_rows
from model_store.preprocess import RESIZE_SIZE, to_model_input
from model_store.weights import is_demo
from visionqueue.core.errors import Unprocessable
from visionqueue.core.images import DRAFT_SCALE_KEY, decode_image

MAX_TOP_K = 20

ClassifyFn = Callable[[np.ndarray], Awaitable[np.ndarray]]  # (224, 224, 3) crop -> probs


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
