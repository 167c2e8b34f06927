"""BentoML patches: they keep BentoML's answers, apply only where they fit, and undo."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pytest
from _bentoml_sdk.io_models import IOMixin, IORootModel
from _bentoml_sdk.method import APIMethod
from bentoml._internal.marshal.dispatcher import CorkDispatcher
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from visionqueue.bento.patches import (
    PATCHES,
    TESTED_BENTOML,
    applied_bentoml_patches,
    apply_bentoml_patches,
    revert_bentoml_patches,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def bentomls_own() -> Iterator[None]:
    """Each test starts and ends with BentoML unpatched."""
    revert_bentoml_patches()
    yield
    revert_bentoml_patches()


def _originals() -> dict[str, Any]:
    return {name: p.locate().__dict__[p.attribute] for name, p in PATCHES.items()}


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
    assert getattr(IOMixin.mime_type, "__wrapped__", None) is None  # BentoML's own
    apply_bentoml_patches()
    compute = IOMixin.mime_type.__func__.__wrapped__  # type: ignore[attr-defined]
    answers = [spec.mime_type() for spec in specs]
    assert answers == [compute(spec) for spec in specs]
    assert "multipart/form-data" in answers and "text/plain" in answers


def test_the_schema_is_built_once_per_class(monkeypatch: Any) -> None:
    apply_bentoml_patches()
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
    apply_bentoml_patches()
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


def test_patches_apply_at_call_not_at_import_and_revert() -> None:
    before = _originals()
    import visionqueue.bento.patches  # noqa: F401  # importing changes nothing

    assert _originals() == before
    assert apply_bentoml_patches("greedy") == list(PATCHES)
    assert apply_bentoml_patches("greedy") == list(PATCHES)  # idempotent
    assert all(_originals()[name] is not before[name] for name in PATCHES)
    revert_bentoml_patches()
    assert _originals() == before and applied_bentoml_patches() == []


def test_the_bentoml_policy_keeps_bentomls_dispatcher() -> None:
    own = CorkDispatcher.controller
    apply_bentoml_patches("greedy")
    assert CorkDispatcher.controller is not own
    assert "greedy-batching" not in apply_bentoml_patches("bentoml")
    assert CorkDispatcher.controller is own
    with pytest.raises(ValueError, match="unknown batch policy"):
        apply_bentoml_patches("eager")


def test_another_bentoml_release_keeps_bentomls_behaviour(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    before = _originals()
    monkeypatch.setattr(bentoml, "__version__", "1.4.41")
    with caplog.at_level(logging.WARNING, logger="visionqueue.bento.patches"):
        assert apply_bentoml_patches("greedy") == []
    assert _originals() == before
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert all(name in warned for name in PATCHES)
    assert "1.4.41" in warned and TESTED_BENTOML in warned
    # and BentoML's own request path still answers (its timer left armed, as upstream)
    sent = __import__("asyncio").run(_request(TimeoutMiddleware(_ok, timeout=120)))
    assert sent[0]["status"] == 200


def test_a_renamed_attribute_skips_only_the_patch_that_needs_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    own = CorkDispatcher.controller
    # an upgrade that renamed the attribute the greedy controller waits on
    monkeypatch.delattr(CorkDispatcher, "_wake_event")
    with caplog.at_level(logging.WARNING, logger="visionqueue.bento.patches"):
        applied = apply_bentoml_patches("greedy")
    assert applied == [
        "io-mime-type-cache",
        "request-timer-cancel",
        "no-url-uploads",
        "route-template-labels",
    ]
    assert CorkDispatcher.controller is own
    [record] = caplog.records
    assert "greedy-batching" in record.getMessage() and "_wake_event" in record.getMessage()


def test_the_tested_release_is_the_pinned_one() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"bentoml=={TESTED_BENTOML}"' in pyproject
    assert bentoml.__version__ == TESTED_BENTOML


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_url_in_a_file_field_is_refused_not_downloaded() -> None:
    import asyncio
    import io

    from _bentoml_impl.serde import MultipartSerde
    from bentoml.exceptions import BadInput
    from starlette.datastructures import UploadFile

    apply_bentoml_patches()
    upload = UploadFile(io.BytesIO(b"png"), filename="a.png")
    assert asyncio.run(MultipartSerde.ensure_file(upload)) is upload
    with pytest.raises(BadInput, match="not text or a URL"):
        asyncio.run(MultipartSerde.ensure_file("http://100.64.0.1/latest/meta-data"))
