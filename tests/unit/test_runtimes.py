"""The runtime a model runs on: chosen from the device and the providers, and reported as it ran."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from model_store.answers import model_block
from model_store.inference import _provider_fallback, graph_runner, load_classifier
from model_store.onnx_backend import export_onnx
from model_store.runtimes import CPU_PROVIDER, CUDA_PROVIDER, Runtime, choose_runtime
from model_store.serving import describe

CPU_ONLY = [CPU_PROVIDER]
WITH_CUDA = [CUDA_PROVIDER, CPU_PROVIDER]


@pytest.mark.parametrize(
    ("kind", "backend", "device", "providers", "expected"),
    [
        # a GPU host: the default serves on it, ONNX Runtime's CUDA provider first
        ("state_dict", "auto", "cuda", WITH_CUDA, ("onnxruntime", "cuda", CUDA_PROVIDER)),
        ("state_dict", "onnxruntime", "cuda", WITH_CUDA, ("onnxruntime", "cuda", CUDA_PROVIDER)),
        ("onnx", "auto", "cuda", WITH_CUDA, ("onnxruntime", "cuda", CUDA_PROVIDER)),
        # a GPU host with the CPU-only onnxruntime wheel: torch on CUDA, never the CPU
        ("state_dict", "auto", "cuda", CPU_ONLY, ("eager", "cuda", "torch:cuda")),
        ("state_dict", "onnxruntime", "cuda", CPU_ONLY, ("eager", "cuda", "torch:cuda")),
        # an ONNX file has no torch module: the CPU provider, and the device says cpu
        ("onnx", "onnxruntime", "cuda", CPU_ONLY, ("onnxruntime", "cpu", CPU_PROVIDER)),
        ("torchscript", "auto", "cuda", WITH_CUDA, ("eager", "cuda", "torch:cuda")),
        ("torchscript", "openvino", "cpu", CPU_ONLY, ("eager", "cpu", "torch:cpu")),
        # the CPU
        ("state_dict", "auto", "cpu", CPU_ONLY, ("onnxruntime", "cpu", CPU_PROVIDER)),
        ("state_dict", "openvino", "cpu", CPU_ONLY, ("openvino", "cpu", "openvino:CPU")),
        ("onnx", "openvino", "cpu", CPU_ONLY, ("openvino", "cpu", "openvino:CPU")),
        # OpenVINO has no CUDA: asked for on a GPU host it runs on the CPU and says so
        ("state_dict", "openvino", "cuda", WITH_CUDA, ("openvino", "cpu", "openvino:CPU")),
        ("state_dict", "eager", "cuda", WITH_CUDA, ("eager", "cuda", "torch:cuda")),
        ("state_dict", "compile", "cpu", CPU_ONLY, ("compile", "cpu", "torch:cpu")),
    ],
)
def test_choose_runtime(
    kind: str, backend: str, device: str, providers: list[str], expected: tuple[str, ...]
) -> None:
    assert choose_runtime(kind, backend, device, providers) == Runtime(*expected)


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown inference backend 'tensorrt'"):
        choose_runtime("state_dict", "tensorrt", "cpu", CPU_ONLY)


@pytest.fixture(scope="module")
def graph(stored_model, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    import torch
    from torchvision.models import resnet18

    module = resnet18(weights=None)
    state = torch.load(
        Path(stored_model.path) / "resnet18_state_dict.pt", map_location="cpu", weights_only=True
    )
    module.load_state_dict(state)
    return export_onnx(module.eval(), tmp_path_factory.mktemp("onnx") / "resnet18.onnx")


def test_a_provider_the_runtime_lacks_is_reported_as_what_ran(
    graph: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """This machine's onnxruntime has no CUDA provider: asking for it must not be believed."""
    asked = Runtime("onnxruntime", "cuda", CUDA_PROVIDER)
    with pytest.warns(UserWarning, match="CUDAExecutionProvider' is not in available"):
        runner = graph_runner(asked, graph, 1)
    assert runner.provider == CPU_PROVIDER  # read back from the session, not from the request
    with caplog.at_level(logging.WARNING):
        # with a torch module at hand: torch on the CUDA device instead
        runtime, kept = _provider_fallback(asked, runner, object(), "resnet18:x")
        assert runtime == Runtime("eager", "cuda", "torch:cuda")
        assert kept is None
        # an ONNX file: it stays on ONNX Runtime's CPU provider, and the device says cpu
        runtime, kept = _provider_fallback(asked, runner, None, "onnx:x")
        assert runtime == Runtime("onnxruntime", "cpu", CPU_PROVIDER)
        assert kept is runner
    assert "could not enable CUDAExecutionProvider" in caplog.text


@pytest.mark.parametrize(
    ("backend", "provider"),
    [("onnxruntime", CPU_PROVIDER), ("openvino", "openvino:CPU"), ("eager", "torch:cpu")],
)
def test_what_ran_is_in_the_description_and_every_answer(  # type: ignore[no-untyped-def]
    stored_model, backend: str, provider: str
) -> None:
    classifier = load_classifier(
        stored_model.path,
        stored_model.tag,
        stored_model.weights_origin,
        tuple(stored_model.metadata["labels"]),
        device="cpu",
        backend=backend,
        metadata=stored_model.metadata,
    )
    version = describe(classifier, {})
    assert (version["device"], version["backend"], version["execution_provider"]) == (
        "cpu",
        backend,
        provider,
    )
    block = model_block("resnet18", version)
    assert (block["device"], block["backend"], block["execution_provider"]) == (
        "cpu",
        backend,
        provider,
    )
    crops = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    assert classifier.predict_proba(crops).shape == (2, 1000)


def test_model_backends_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from visionqueue.core.settings import ModelSettings

    monkeypatch.setenv("VQ_MODEL_BACKENDS", "pets=openvino, resnet18=eager")
    assert ModelSettings().backend_by_model == {"pets": "openvino", "resnet18": "eager"}
    monkeypatch.setenv("VQ_MODEL_BACKENDS", "pets=tensorrt")
    with pytest.raises(ValidationError, match="NAME=BACKEND"):
        ModelSettings()
