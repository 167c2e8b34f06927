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
