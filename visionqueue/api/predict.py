"""``POST /predict``: validate an upload, crop it for its model, classify it on that model's queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from model_store.answers import answer_body
from model_store.crops import prepare_crop, prepare_pixels
from model_store.preprocess import Preprocessing
from model_store.priority import WORK_CLASS_HEADER, WorkClass
from visionqueue.api.served_models import Answer, ServedModels, current_class
from visionqueue.core.errors import Unprocessable

MAX_TOP_K = 20


def request_work(header: str | None, deadline_ms: int) -> tuple[WorkClass, float | None]:
    """Return a ``/predict`` call's class of work and the seconds it may wait (or None).

    A person's request is interactive, with ``VQ_PREDICT_DEADLINE_MS`` (0: none); our
    workers' calls say ``jobs`` or ``bulk`` in ``X-VQ-Work-Class`` and have no deadline (a
    job is retried, never dropped). Asking for interactive gains nothing: it is the default.
    """
    if not header:
        return WorkClass.INTERACTIVE, deadline_ms / 1000 if deadline_ms else None
    try:
        work_class = WorkClass.parse(header)
    except ValueError:
        raise Unprocessable(
            f"{WORK_CLASS_HEADER} must be interactive, jobs or bulk", code="invalid_work_class"
        ) from None
    if work_class is WorkClass.INTERACTIVE:
        return work_class, deadline_ms / 1000 if deadline_ms else None
    return work_class, None


def check_top_k(value: Any) -> int:
    """Return ``top_k`` if it is an integer in 1..20, else raise a 422."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
        raise Unprocessable(
            f"top_k must be an integer between 1 and {MAX_TOP_K}", code="invalid_top_k"
        )
    return value


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
    return answer_body(
        answer.probs,
        k,
        name=name,
        version=answer.version,
        started=started,
        preprocessing=preprocessing,
        work_class=current_class().label,
    )


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
