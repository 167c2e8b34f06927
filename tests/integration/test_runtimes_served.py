"""A real server says what ran each model: an OpenVINO fp32 model and an int8 version beside it.

``VQ_MODEL_BACKENDS`` puts one model on OpenVINO; an int8 version made by ``import-model
--quantize int8`` is served next to it. ``/v1/models``, ``/readyz`` and each ``/predict``
answer must name the backend and execution provider that really ran, the int8 version must
show its stored agreement report, and the OpenVINO answers must equal ONNX Runtime's on the
same photo within 1e-4.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from model_store.inference import load_classifier
from model_store.preprocess import to_model_input
from model_store.quantize import quantize_version
from tests.support.images import skimage_photo
from tests.support.servers import bento_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # one bentoml serve, two models

PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")


@pytest.fixture(scope="module")
def int8(stored_model, tmp_path_factory: pytest.TempPathFactory) -> Any:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("int8-images")
    for name in PHOTOS:
        (folder / f"{Path(name).stem}.jpg").write_bytes(skimage_photo(name))
    stored, _ = quantize_version("resnet18-int8", stored_model.tag, folder)
    return stored


@pytest.fixture(scope="module")
def server(  # type: ignore[no-untyped-def]
    stored_model, int8, server_env: dict[str, str], session_dir: Path
) -> Iterator[str]:
    env = {
        **server_env,
        "VQ_MODELS": f"{stored_model.tag},{int8.tag}",
        "VQ_MODEL_BACKENDS": "resnet18=openvino",
        "VQ_DATA_DIR": str(session_dir / "runtimes-data"),
    }
    with bento_server(env, session_dir / "runtimes-bento.log", timeout=300) as url:
        yield url


def test_each_model_says_what_ran_it(server: str, int8: Any) -> None:  # type: ignore[no-untyped-def]
    listed = httpx.get(f"{server}/v1/models", timeout=60).json()["models"]
    by_name = {m["name"]: m for m in listed}
    fp32, quantized = by_name["resnet18"], by_name["resnet18-int8"]
    assert (fp32["backend"], fp32["execution_provider"], fp32["device"]) == (
        "openvino",
        "openvino:CPU",
        "cpu",
    )
    assert "quantization" not in fp32
    assert (quantized["backend"], quantized["execution_provider"]) == (
        "onnxruntime",
        "CPUExecutionProvider",
    )
    assert quantized["quantization"] == int8.metadata["quantization"]
    ready = httpx.get(f"{server}/readyz", timeout=60).json()
    assert ready["models"]["resnet18"]["execution_provider"] == "openvino:CPU"
    assert ready["models"]["resnet18-int8"]["execution_provider"] == "CPUExecutionProvider"
    for name, provider in (("resnet18", "openvino:CPU"), ("resnet18-int8", "CPUExecutionProvider")):
        resp = httpx.post(
            f"{server}/predict",
            files={"image": ("cat.png", skimage_photo("chelsea.png"), "image/png")},
            data={"model": name},
            timeout=120,
        )
        assert resp.status_code == 200, resp.text
        block = resp.json()["model"]
        assert (block["name"], block["execution_provider"]) == (name, provider)


def test_openvino_answers_equal_onnxruntime(server: str, stored_model) -> None:  # type: ignore[no-untyped-def]
    import io

    from PIL import Image

    reference = load_classifier(
        stored_model.path,
        stored_model.tag,
        stored_model.weights_origin,
        tuple(stored_model.metadata["labels"]),
        device="cpu",
        backend="onnxruntime",
        metadata=stored_model.metadata,
    )
    for name in PHOTOS:
        data = skimage_photo(name)
        crop = to_model_input(Image.open(io.BytesIO(data)).convert("RGB"))
        expected = reference.predict_proba(crop[None])[0]
        resp = httpx.post(
            f"{server}/predict",
            files={"image": (name, data, "application/octet-stream")},
            data={"model": "resnet18", "top_k": "5"},
            timeout=120,
        )
        assert resp.status_code == 200, resp.text
        for row in resp.json()["predictions"]:
            assert abs(row["confidence"] - float(expected[row["index"]])) <= 1e-4
        best = resp.json()["predictions"][0]["index"]
        assert float(expected[best]) >= float(np.max(expected)) - 1e-4
