"""Every inference backend equals the torchvision reference (max abs prob diff <= 1e-4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from model_store.inference import BACKENDS, load_classifier

# a persistent compile cache keeps the 'compile' backend's test to seconds after the first run
COMPILE_CACHE = Path.home() / ".cache" / "visionqueue" / "torch-compile-tests"


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(stored_model, crops: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    model = resnet18(weights=None)
    state = torch.load(
        Path(stored_model.path) / "resnet18_state_dict.pt", map_location="cpu", weights_only=True
    )
    model.load_state_dict(state)
    model.eval()
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        return torch.softmax(model((x - mean) / std), dim=1).numpy()


@pytest.mark.parametrize(
    "backend",
    # torch.compile takes minutes on 2 cores until its cache (COMPILE_CACHE) is warm
    [pytest.param(b, marks=pytest.mark.slow) if b == "compile" else b for b in BACKENDS],
)
def test_backend_matches_the_reference(  # type: ignore[no-untyped-def]
    stored_model, crops: np.ndarray, reference: np.ndarray, backend: str
) -> None:
    classifier = load_classifier(
        stored_model.path,
        stored_model.tag,
        stored_model.weights_origin,
        tuple(str(i) for i in range(1000)),
        backend=backend,
        warmup_batch=4,
        compile_cache_dir=str(COMPILE_CACHE),
    )
    got = classifier.predict_proba(crops)
    assert got.shape == (4, 1000)
    assert np.abs(got - reference).max() <= 1e-4
    assert (got.argmax(axis=1) == reference.argmax(axis=1)).all()
    single = classifier.predict_proba(crops[:1])  # another batch size: no recompile failure
    assert np.abs(single - reference[:1]).max() <= 1e-4


@pytest.mark.parametrize("backend", ["onnxruntime", "eager"])
def test_background_passes_answer_bit_for_bit_like_the_serial_path(  # type: ignore[no-untyped-def]
    stored_model, crops: np.ndarray, backend: str
) -> None:
    """The single-threaded session job passes run on (docs/priority.md) changes no answer;
    backends without one run background passes on the model itself."""
    classifier = load_classifier(
        stored_model.path,
        stored_model.tag,
        stored_model.weights_origin,
        tuple(str(i) for i in range(1000)),
        backend=backend,
        background_session=True,
    )
    assert (classifier.background is not None) == (backend == "onnxruntime")
    for batch in (crops[:1], crops):
        serial = classifier.predict_proba(batch)
        assert np.array_equal(classifier.predict_proba(batch, background=True), serial)
