"""Batched inference of a stored classifier: uint8 crops in, class probabilities out.

The front ships ``(N, crop, crop, 3)`` uint8 crops (``model_store.preprocess``); here they
are converted to float, normalised exactly like the model's torchvision preset (or its
imported preprocessing), and run in one forward. A stored model is a torchvision
state_dict, a TorchScript archive or an ONNX graph (``model_store.formats``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model_store.preprocess import IMAGENET_PREPROCESSING, Preprocessing
from model_store.runtimes import BACKENDS as RUNTIME_BACKENDS
from model_store.runtimes import CUDA_PROVIDER, Runtime, choose_runtime, torch_provider
from model_store.weights import is_demo

logger = logging.getLogger(__name__)

BACKENDS = RUNTIME_BACKENDS


@dataclass(frozen=True)
class ModelInfo:
    tag: str
    weights_origin: str
    device: str
    backend: str
    labels: tuple[str, ...]
    preprocessing: Preprocessing = field(default=IMAGENET_PREPROCESSING)
    architecture: str = "torchvision.models.resnet18"
    # what really ran the forward pass: an ONNX Runtime execution provider, "openvino:CPU"
    # or "torch:<device>"
    provider: str = ""
    # an int8 version's agreement report against its fp32 source (model_store.quantize)
    quantization: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def demo(self) -> bool:
        return is_demo(self.weights_origin)


def configure_threads(threads: int) -> int:
    """Pin torch's intra-op threads (0 = all cores); oversubscription collapses throughput."""
    # OpenMP workers that spin between batches steal the cores the front decodes on;
    # this must be set before torch (and its OpenMP runtime) is first imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    n = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


class BatchClassifier:
    """A loaded classifier that classifies uint8 crops in batches."""

    def __init__(self, module: Any, info: ModelInfo) -> None:
        import torch

        self.module = module
        self.info = info
        prep = info.preprocessing
        self._device = torch.device(info.device)
        self._mean = torch.tensor(prep.mean, dtype=torch.float32, device=self._device).view(
            1, 3, 1, 1
        )
        self._std = torch.tensor(prep.std, dtype=torch.float32, device=self._device).view(
            1, 3, 1, 1
        )
        self._channels_last = info.backend in ("channels_last", "compile")
        self.onnx: Any = None  # an OnnxRunner or OpenVinoRunner (the ONNX graph backends)
        # a single-threaded session of the same graph for background passes, which run side
        # by side in threads of lowered priority (docs/priority.md); None: they use ``onnx``
        self.background: Any = None
        self.weights_bytes = 0  # bytes of the parameters it holds (set by load_classifier)

    def check_crops(self, crops: np.ndarray) -> None:
        size = self.info.preprocessing.crop
        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (size, size, 3):
            raise ValueError(
                f"expected (N, {size}, {size}, 3) uint8 crops, got {crops.dtype} {crops.shape}"
            )

    def normalize_batch(self, crops: np.ndarray) -> Any:
        """Turn ``(N, crop, crop, 3)`` uint8 into the normalised float tensor torchvision makes."""
        import torch

        self.check_crops(crops)
        if not (crops.flags.writeable and crops.flags.c_contiguous):
            crops = np.array(crops, order="C")  # torch refuses read-only buffers
        batch = torch.from_numpy(crops).to(self._device)
        batch = batch.permute(0, 3, 1, 2).to(torch.float32).div(255)
        batch = batch.sub(self._mean).div(self._std)
        if self._channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def predict_proba(self, crops: np.ndarray, background: bool = False) -> np.ndarray:
        """Return ``(N, C)`` float32 softmax probabilities (``background``: on the
        single-threaded session, in the calling thread, when there is one)."""
        import torch

        if self.onnx is not None:
            from model_store.onnx_backend import normalize_numpy, softmax

            self.check_crops(crops)
            prep = self.info.preprocessing
            runner = self.background if background and self.background is not None else self.onnx
            return softmax(runner.logits(normalize_numpy(crops, prep.mean, prep.std)))

        with torch.inference_mode():
            logits = self.module(self.normalize_batch(crops))
            probs = torch.softmax(logits, dim=1)
        return probs.to("cpu", torch.float32).numpy()


def load_classifier(
    model_path: str,
    tag: str,
    weights_origin: str,
    labels: tuple[str, ...],
    device: str = "auto",
    backend: str = "eager",
    warmup_batch: int = 1,
    compile_cache_dir: str | None = None,
    metadata: dict[str, Any] | None = None,
    background_session: bool = False,
    background_runner: Callable[[Path], Any] | None = None,
) -> BatchClassifier:
    """Load a stored model (its ``metadata`` says which kind) into a ready ``BatchClassifier``.

    ``model_store.runtimes.choose_runtime`` decides what runs it; ONNX files run on ONNX
    Runtime or OpenVINO, TorchScript archives run eagerly (``compile`` and the graph
    backends need the Python module), ``channels_last`` included. ``background_session``
    opens a second, single-threaded ONNX Runtime session for background passes where the
    model runs on ONNX Runtime's CPU provider (the classifier's ``background`` is then set);
    ``background_runner`` builds it instead from the graph's path (the classifier's lane
    process, ``visionqueue.dataplane.lane_process``).
    """
    import torch

    from model_store.runtimes import ort_available_providers
    from model_store.store import WEIGHTS_FILE

    if backend not in BACKENDS:
        raise ValueError(f"unknown inference backend {backend!r}; choose from {BACKENDS}")
    meta = metadata or {}
    kind = str(meta.get("format", "state_dict"))
    prep = Preprocessing.from_spec(meta.get("preprocessing"))
    architecture = str(meta.get("architecture", "torchvision.models.resnet18"))
    file = os.path.join(model_path, str(meta.get("file", WEIGHTS_FILE)))
    runtime = choose_runtime(kind, backend, pick_device(device), ort_available_providers())
    module: Any = None
    if kind == "torchscript":
        from model_store.formats import load_torchscript

        module = load_torchscript(Path(file))
    elif kind != "onnx":
        from model_store.architectures import build_stored

        state_dict = torch.load(file, map_location="cpu", weights_only=True)
        arch = architecture.rsplit(".", 1)[-1]
        module = build_stored(arch, int(meta.get("num_classes", len(labels))), state_dict)
    weights = 0
    if module is not None:
        tensors = [*module.parameters(), *module.buffers()]
        weights = sum(t.numel() * t.element_size() for t in tensors)
    runner: Any = None
    if runtime.runs_graph:
        if kind == "onnx":
            graph = Path(file)
            weights = os.path.getsize(file)
        else:  # exported on the CPU, before the module moves anywhere
            graph = exported_onnx(module, tag, compile_cache_dir, prep.crop)
        runner = graph_runner(runtime, graph, torch.get_num_threads())
        if runner.provider != runtime.provider:
            runtime, runner = _provider_fallback(runtime, runner, module, tag)
    if runner is None:
        module = module.to(runtime.device)
        if runtime.backend in ("channels_last", "compile"):
            module = module.to(memory_format=torch.channels_last)
        if runtime.backend == "compile":
            module = compile_module(module, compile_cache_dir)
    info = ModelInfo(
        tag,
        weights_origin,
        runtime.device,
        runtime.backend,
        labels,
        prep,
        architecture,
        runtime.provider,
        meta.get("quantization"),
    )
    classifier = BatchClassifier(None if runner is not None else module, info)
    classifier.onnx = runner
    classifier.weights_bytes = weights
    if background_session and runtime.backend == "onnxruntime" and runner is not None:
        from model_store.onnx_backend import OnnxRunner
        from model_store.runtimes import CPU_PROVIDER

        if runner.provider == CPU_PROVIDER:
            make = background_runner or (lambda path: OnnxRunner(path, 1))
            classifier.background = make(runner.path)
    # warm-up (and, for "compile", compilation) at start-up, never on a first request
    for batch in sorted({1, max(1, warmup_batch)}):
        zeros = np.zeros((batch, prep.crop, prep.crop, 3), dtype=np.uint8)
        classifier.predict_proba(zeros)
        if classifier.background is not None:
            classifier.predict_proba(zeros, background=True)
    return classifier


def graph_runner(runtime: Runtime, path: Path, threads: int) -> Any:
    """Open the ONNX graph at ``path`` on the runtime's backend and provider."""
    if runtime.backend == "openvino":
        from model_store.openvino_backend import OpenVinoRunner

        return OpenVinoRunner(path, threads)
    from model_store.onnx_backend import OnnxRunner
    from model_store.runtimes import CPU_PROVIDER

    providers = (runtime.provider, CPU_PROVIDER) if runtime.provider != CPU_PROVIDER else ()
    return OnnxRunner(path, threads, providers or (CPU_PROVIDER,))


def _provider_fallback(runtime: Runtime, runner: Any, module: Any, tag: str) -> tuple[Runtime, Any]:
    """ONNX Runtime did not enable the provider asked for: say so, and serve truthfully."""
    if runtime.provider == CUDA_PROVIDER and module is not None:
        logger.warning(
            "%s: ONNX Runtime could not enable %s (got %s); serving with torch on %s instead",
            tag,
            CUDA_PROVIDER,
            runner.provider,
            runtime.device,
        )
        return Runtime("eager", runtime.device, torch_provider(runtime.device)), None
    logger.warning(
        "%s: ONNX Runtime could not enable %s; serving on %s",
        tag,
        runtime.provider,
        runner.provider,
    )
    return Runtime(runtime.backend, "cpu", runner.provider), runner


def exported_onnx(module: Any, tag: str, cache_dir: str | None, size: int = 224) -> Path:
    """Export the model to ONNX once (cached by tag) and return the graph's path."""
    import tempfile

    from model_store.onnx_backend import export_onnx

    folder = Path(cache_dir or tempfile.gettempdir()) / "onnx"
    path = folder / f"{tag.replace(':', '-')}.onnx"
    if not path.exists():
        logger.info("exporting %s to ONNX (%s)", tag, path)
        export_onnx(module, path, size)
    return path


def compile_module(module: Any, cache_dir: str | None) -> Any:
    """``torch.compile`` the model with a persistent cache, so restarts compile in seconds."""
    import torch

    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache_dir)
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    # one graph for every batch size the dispatcher may form
    return torch.compile(module, dynamic=True)


def top_k(probs: np.ndarray, labels: tuple[str, ...] | list[str], k: int) -> list[dict[str, Any]]:
    """Return the ``k`` most likely classes of one probability row, best first."""
    k = max(1, min(k, probs.shape[-1]))
    idx = np.argsort(-probs, kind="stable")[:k]
    return [{"class": labels[i], "index": int(i), "confidence": float(probs[i])} for i in idx]
