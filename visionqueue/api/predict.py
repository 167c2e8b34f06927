"""``POST /predict``'s own rules: ``top_k``, the priority class a call asks for, and the
``Server-Timing`` header it answers with (the classifying is the data plane's,
``visionqueue.dataplane``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse

from visionqueue.core.errors import Unprocessable, VQError
from visionqueue.dataplane.plane import DataPlane
from visionqueue.dataplane.priority import PRIORITY_HEADER, SYNC_PRIORITY, Priority
from visionqueue.dataplane.requests import Timing

MAX_TOP_K = 20


def check_top_k(value: Any) -> int:
    """Return ``top_k`` if it is an integer in 1..20, else raise a 422."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
        raise Unprocessable(
            f"top_k must be an integer between 1 and {MAX_TOP_K}", code="invalid_top_k"
        )
    return value


def request_priority(header: str | None) -> Priority:
    """Return a ``/predict`` call's priority class: interactive unless our workers say ``jobs``
    or ``bulk`` in ``X-VQ-Work-Class``. Asking for interactive gains nothing: it is the default."""
    if not header:
        return SYNC_PRIORITY
    try:
        return Priority.parse(header)
    except ValueError:
        raise Unprocessable(
            f"{PRIORITY_HEADER} must be interactive, jobs or bulk", code="invalid_work_class"
        ) from None


def server_timing(timing: Timing) -> str:
    """The W3C ``Server-Timing`` value of one answer, in milliseconds (browsers' developer
    tools show it): decoding and cropping, the round trip to the classifier, and the forward
    pass inside it."""
    parts = (
        ("decode", timing.decode_s, "decode and crop"),
        ("classify", timing.classify_s, "round trip to the classifier"),
        ("forward", timing.forward_s, "forward pass"),
    )
    return ", ".join(f'{name};dur={1000 * s:.1f};desc="{desc}"' for name, s, desc in parts)


async def predict_upload(
    dataplane: DataPlane, image: Path, ctx: Any, top_k: Any, model: str
) -> Any:
    """Answer ``POST /predict`` on ``ctx`` (the route's ``bentoml.Context``): the body, with
    its ``Server-Timing``; a refused request in our error envelope and status."""
    try:
        priority = request_priority(ctx.request.headers.get(PRIORITY_HEADER))
        timing = Timing()
        body = await dataplane.classify_upload(
            image, check_top_k(top_k), model, priority, timing=timing
        )
        ctx.response.headers["Server-Timing"] = server_timing(timing)
        return body
    except VQError as exc:
        # BentoML gives an API that takes ``ctx`` the status of ``ctx.response``
        ctx.response.status_code = exc.status
        return JSONResponse(exc.to_body(), status_code=exc.status, headers=exc.headers())
