"""Batched inference of a stored classifier: uint8 crops in, class probabilities out.

The front ships ``(N, crop, crop, 3)`` uint8 crops (``model_store.preprocess``); here they
are converted to float, normalised exactly like the model's torchvision preset (or its
imported preprocessing), and run in one forward. A stored model is a torchvision
state_dict, a TorchScript archive or an ONNX graph (``model_store.formats``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model_store.preprocess import IMAGENET_PREPROCESSING, Preprocessing
from model_store.weights import is_demo

logger = logging.getLogger(__name__)

BACKENDS = ("eager", "channels_last", "compile", "onnxruntime")


@dataclass(frozen=True)
class ModelInfo:
    tag: str
    weights_origin: str
    device: str
    backend: str
    labels: tuple[str, ...]
    preprocessing: Preprocessing = field(default=IMAGENET_PREPROCESSING)
    architecture: str = "torchvision.models.resnet18"

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
        self.onnx: Any = None  # an OnnxRunner for the "onnxruntime" backend
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

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        """Return ``(N, C)`` float32 softmax probabilities."""
        import torch

        if self.onnx is not None:
            from model_store.onnx_backend import normalize_numpy, softmax

            self.check_crops(crops)
            prep = self.info.preprocessing
            return softmax(self.onnx.logits(normalize_numpy(crops, prep.mean, prep.std)))

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
) -> BatchClassifier:
    """Load a stored model (its ``metadata`` says which kind) into a ready ``BatchClassifier``.

    ONNX files always run on ONNX Runtime; TorchScript archives run eagerly (``compile``
    and the ONNX export need the Python module), ``channels_last`` included.
    """
    import torch

    from model_store.store import WEIGHTS_FILE

    if backend not in BACKENDS:
        raise ValueError(f"unknown inference backend {backend!r}; choose from {BACKENDS}")
    meta = metadata or {}
    kind = str(meta.get("format", "state_dict"))
    prep = Preprocessing.from_spec(meta.get("preprocessing"))
    architecture = str(meta.get("architecture", "torchvision.models.resnet18"))
    file = os.path.join(model_path, str(meta.get("file", WEIGHTS_FILE)))
    dev = pick_device(device)
    module: Any = None
    if kind == "onnx":
        backend = "onnxruntime"
    elif kind == "torchscript":
        if backend in ("compile", "onnxruntime"):
            backend = "eager"
        from model_store.formats import load_torchscript

        module = load_torchscript(Path(file)).to(dev)
    else:
        from model_store.architectures import build_stored

        state_dict = torch.load(file, map_location="cpu", weights_only=True)
        arch = architecture.rsplit(".", 1)[-1]
        module = build_stored(arch, int(meta.get("num_classes", len(labels))), state_dict)
        module.to(dev)
    if backend in ("channels_last", "compile"):
        module = module.to(memory_format=torch.channels_last)
    if backend == "compile":
        module = compile_module(module, compile_cache_dir)
    info = ModelInfo(tag, weights_origin, dev, backend, labels, prep, architecture)
    classifier = BatchClassifier(module, info)
    if module is not None:
        tensors = [*module.parameters(), *module.buffers()]
        classifier.weights_bytes = sum(t.numel() * t.element_size() for t in tensors)
    if kind == "onnx":
        from model_store.onnx_backend import OnnxRunner

        classifier.onnx = OnnxRunner(Path(file), torch.get_num_threads())
        classifier.weights_bytes = os.path.getsize(file)
    elif backend == "onnxruntime":
        classifier.onnx = onnx_runner(module, tag, compile_cache_dir, prep.crop)
        classifier.module = None  # the exported graph holds the weights now
    # warm-up (and, for "compile", compilation) at start-up, never on a first request
    for batch in sorted({1, max(1, warmup_batch)}):
        classifier.predict_proba(np.zeros((batch, prep.crop, prep.crop, 3), dtype=np.uint8))
    return classifier


def onnx_runner(module: Any, tag: str, cache_dir: str | None, size: int = 224) -> Any:
    """Export (or reuse the cached export of) the model and open an ONNX Runtime session."""
    import tempfile

    import torch

    from model_store.onnx_backend import OnnxRunner, export_onnx

    folder = Path(cache_dir or tempfile.gettempdir()) / "onnx"
    path = folder / f"{tag.replace(':', '-')}.onnx"
    if not path.exists():
        logger.info("exporting %s to ONNX (%s)", tag, path)
        export_onnx(module, path, size)
    return OnnxRunner(path, torch.get_num_threads())


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
