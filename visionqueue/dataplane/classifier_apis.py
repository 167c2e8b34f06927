"""The classifier service's batch APIs: one adaptive-batching queue per served model.

``VQ_MODELS`` names the served models; each gets a batchable API of its own on the classifier
(``ServedSpec.api``), so a batch never mixes models, and a packed twin (``crops_wire``) for
callers over the network. Our own callers use a third, ``prioritized_{api}`` (packed crops, a
priority class, a timeout): the worker's priority queue (``priority_queue``, docs/priority.md). They are generated from the settings when ``service.py`` is imported
(BentoML reads an API's batching options when the class is decorated).
"""

from __future__ import annotations

from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.validators import DType
from pydantic import AfterValidator
from starlette.responses import JSONResponse

from model_store.crops import check_crop_batch
from model_store.serving import ServedSpec
from visionqueue.dataplane.crops_wire import packed_api, prioritized_api, unpack_crops
from visionqueue.dataplane.priority_queue import http_call

# each request's crops are checked before they join a batch (model_store.crops): a malformed
# request gets its own 400 instead of failing the batch it would have joined
UInt8Crops = Annotated[np.ndarray, DType("uint8"), AfterValidator(check_crop_batch)]
Float32Rows = Annotated[np.ndarray, DType("float32")]


def add_batch_apis(
    service_class: type, specs: list[ServedSpec], max_batch_size: int, max_latency_ms: int
) -> None:
    """Give ``service_class`` (which has ``run_batch(name, crops)`` and ``host.queue``) each
    model's two batch APIs and its priority-queue API."""

    def batchable(func: Any) -> Any:
        return bentoml.api(
            batchable=True,
            batch_dim=(0, 0),
            max_batch_size=max_batch_size,
            max_latency_ms=max_latency_ms,
        )(func)

    for spec in specs:
        setattr(service_class, spec.api, batchable(_batch_api(spec.name, spec.api)))
        packed = packed_api(spec.api)
        setattr(service_class, packed, batchable(_packed_batch_api(spec.name, packed)))
        setattr(service_class, prioritized_api(spec.api), _prioritized_api(spec.api))


def _prioritized_api(api: str) -> Any:
    """Make ``api``'s HTTP entry into the priority queue: packed crops, a class, a timeout."""

    async def classify_prioritized(
        self: Any, crops: list[str], priority: str = "jobs", timeout_ms: int = 0
    ) -> Any:
        try:
            batch = check_crop_batch(unpack_crops(crops))
        except ValueError as exc:
            error = {"error": {"code": "invalid_crops", "message": str(exc)}}
            return JSONResponse(error, status_code=400)
        status, body = await http_call(self.host.queue, api, batch, priority, timeout_ms)
        return body if status == 200 else JSONResponse(body, status_code=status)

    classify_prioritized.__name__ = classify_prioritized.__qualname__ = prioritized_api(api)
    classify_prioritized.__doc__ = (
        f"Classify packed crops on {api} in a priority class (interactive|jobs|bulk); 504 "
        "once timeout_ms passes before its forward pass."
    )
    return bentoml.api(classify_prioritized)


def _batch_api(name: str, api: str) -> Any:
    """Make ``name``'s batchable API over ``(N, H, W, 3)`` uint8 crops."""

    # the dtypes let a JSON caller's nested lists arrive as uint8 crops
    def classify(self: Any, crops: UInt8Crops) -> Float32Rows:
        return self.run_batch(name, crops)  # type: ignore[no-any-return]

    classify.__name__ = classify.__qualname__ = api
    classify.__doc__ = f"Classify ``(N, H, W, 3)`` uint8 crops with {name} (its own queue)."
    return classify


def _packed_batch_api(name: str, api: str) -> Any:
    """Make ``name``'s batchable API for callers over the network: packed crops."""

    def classify_packed(self: Any, crops: list[str]) -> Float32Rows:
        return self.run_batch(name, unpack_crops(crops))  # type: ignore[no-any-return]

    classify_packed.__name__ = classify_packed.__qualname__ = api
    classify_packed.__doc__ = f"Classify packed crops with {name} (its own queue)."
    return classify_packed
