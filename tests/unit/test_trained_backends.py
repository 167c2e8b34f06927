"""A trained ImageNet classifier gives the same answers on ONNX Runtime and OpenVINO, on real photos."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_store.importer import PreprocessingOverrides, import_classifier
from model_store.inference import load_classifier
from model_store.preprocess import to_model_input
from tests.support.checkpoints import LITE0_PREP, efficientnet_lite0

PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Any:
    graph = efficientnet_lite0(tmp_path_factory.mktemp("lite0") / "effnet-lite0.onnx")
    return import_classifier(
        "effnet-lite0",
        graph,
        overrides=PreprocessingOverrides(**LITE0_PREP),  # type: ignore[arg-type]
    )


@pytest.mark.slow  # the export and two compiled graphs: ~30 s on 2 idle cores, 87 s loaded
def test_openvino_answers_equal_onnxruntime_on_real_photos(trained: Any) -> None:
    import skimage
    from PIL import Image

    def load(backend: str) -> Any:
        return load_classifier(
            trained.path,
            trained.tag,
            trained.weights_origin,
            tuple(trained.metadata["labels"]),
            device="cpu",
            backend=backend,
            metadata=trained.metadata,
        )

    ort, ov = load("onnxruntime"), load("openvino")
    assert ov.info.provider == "openvino:CPU" and ort.info.provider == "CPUExecutionProvider"
    data = Path(skimage.__file__).parent / "data"
    prep = ort.info.preprocessing
    crops = np.stack([to_model_input(Image.open(data / n).convert("RGB"), prep) for n in PHOTOS])
    a, b = ort.predict_proba(crops), ov.predict_proba(crops)
    # trained: the cat is a cat and the coffee is espresso (random weights would say nothing)
    labels = trained.metadata["labels"]
    assert labels[int(a[0].argmax())] in ("tabby", "tiger cat", "Egyptian cat")
    assert labels[int(a[1].argmax())] == "espresso"
    assert np.abs(a - b).max() <= 1e-4
    assert (a.argmax(axis=1) == b.argmax(axis=1)).all()
