"""BentoML hot-path patches keep BentoML's answers and stop recomputing them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from _bentoml_sdk.io_models import IOMixin, IORootModel
from _bentoml_sdk.method import APIMethod

from visionqueue.bentoml_patches import cache_io_mime_types


def _specs() -> list[Any]:
    def classify(self: Any, crops: np.ndarray) -> np.ndarray: ...
    def predict(self: Any, image: Path, top_k: int = 5) -> Any: ...
    def text(self: Any, prompt: str) -> str: ...

    specs = []
    for fn in (classify, predict, text):
        method = APIMethod(fn)
        specs += [method.input_spec, method.output_spec]
    return specs


def test_cached_mime_types_equal_bentomls_own() -> None:
    specs = _specs()
    original = getattr(IOMixin.mime_type, "__wrapped__", None)
    cache_io_mime_types()
    compute = IOMixin.mime_type.__func__.__wrapped__  # type: ignore[attr-defined]
    assert original is None or original is compute
    answers = [spec.mime_type() for spec in specs]
    assert answers == [compute(spec) for spec in specs]
    assert "multipart/form-data" in answers and "text/plain" in answers


def test_the_schema_is_built_once_per_class(monkeypatch: Any) -> None:
    cache_io_mime_types()
    built = 0
    schema = IORootModel.model_json_schema.__func__  # type: ignore[attr-defined]

    def counting(cls: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal built
        built += 1
        return schema(cls, *args, **kwargs)

    monkeypatch.setattr(IORootModel, "model_json_schema", classmethod(counting))
    spec = _specs()[1]  # a fresh IORootModel class (ndarray output)
    for _ in range(5):
        spec.mime_type()
    assert built == 1


def _middleware(handler: Any, timeout: float) -> Any:
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    from visionqueue.bentoml_patches import cancel_request_timers

    cancel_request_timers()
    return TimeoutMiddleware(handler, timeout=timeout)


async def _request(app: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send)
    return sent


def test_request_timers_are_cancelled_once_answered() -> None:
    import asyncio

    async def ok(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main() -> int:
        app = _middleware(ok, timeout=120)
        for _ in range(50):
            sent = await _request(app)
            assert sent[0]["status"] == 200 and sent[1]["body"] == b"ok"
        loop = asyncio.get_running_loop()
        return sum(not h.cancelled() for h in loop._scheduled)  # type: ignore[attr-defined]

    assert asyncio.run(main()) == 0  # BentoML's own left 50 timers holding 50 contexts


def test_a_request_past_the_deadline_still_gets_a_504() -> None:
    import asyncio

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(5)

    sent = asyncio.run(_request(_middleware(slow, timeout=0.05)))
    assert sent[0]["status"] == 504
