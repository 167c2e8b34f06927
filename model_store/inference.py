"""Batched ResNet18 inference: uint8 crops in, class probabilities out.

The front ships ``(N, 224, 224, 3)`` uint8 crops (``model_store.preprocess``); here they
are converted to float, normalised exactly like torchvision's preset, and run in one forward.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_store.preprocess import MEAN, STD
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
    """A loaded ResNet18 that classifies uint8 crops in batches."""

    def __init__(self, module: Any, info: ModelInfo) -> None:
        import torch

        self.module = module
        self.info = info
        self._device = torch.device(info.device)
        self._mean = torch.tensor(MEAN, dtype=torch.float32, device=self._device).view(1, 3, 1, 1)
        self._std = torch.tensor(STD, dtype=torch.float32, device=self._device).view(1, 3, 1, 1)
        self._channels_last = info.backend in ("channels_last", "compile")
        self.onnx: Any = None  # an OnnxRunner for the "onnxruntime" backend

    def normalize_batch(self, crops: np.ndarray) -> Any:
        """Turn ``(N, 224, 224, 3)`` uint8 into the normalised float tensor torchvision makes."""
        import torch

        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) uint8 crops, got {crops.dtype} {crops.shape}")
        if not (crops.flags.writeable and crops.flags.c_contiguous):
            crops = np.array(crops, order="C")  # torch refuses read-only buffers
        batch = torch.from_numpy(crops).to(self._device)
        batch = batch.permute(0, 3, 1, 2).to(torch.float32).div(255)
        batch = batch.sub(self._mean).div(self._std)
        if self._channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        """Return ``(N, 1000)`` float32 softmax probabilities."""
        import torch

        if self.onnx is not None:
            from model_store.onnx_backend import normalize_numpy, softmax

            if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[-1] != 3:
                raise ValueError(
                    f"expected (N, H, W, 3) uint8 crops, got {crops.dtype} {crops.shape}"
                )
            return softmax(self.onnx.logits(normalize_numpy(crops)))

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
) -> BatchClassifier:
    """Load a stored state_dict into ResNet18 and return a ready ``BatchClassifier``."""
    import torch
    from torchvision.models import resnet18

    from model_store.store import WEIGHTS_FILE

    if backend not in BACKENDS:
        raise ValueError(f"unknown inference backend {backend!r}; choose from {BACKENDS}")
    dev = pick_device(device)
    state_dict = torch.load(
        os.path.join(model_path, WEIGHTS_FILE), map_location="cpu", weights_only=True
    )
    module = resnet18(weights=None)
    module.load_state_dict(state_dict, strict=True)
    module.eval().to(dev)
    if backend in ("channels_last", "compile"):
        module = module.to(memory_format=torch.channels_last)
    if backend == "compile":
        module = compile_module(module, compile_cache_dir)
    info = ModelInfo(tag, weights_origin, dev, backend, labels)
    classifier = BatchClassifier(module, info)
    if backend == "onnxruntime":
        classifier.onnx = onnx_runner(module, tag, compile_cache_dir)
        classifier.module = None  # the exported graph holds the weights now
    # warm-up (and, for "compile", compilation) at start-up, never on a first request
    for batch in sorted({1, max(1, warmup_batch)}):
        classifier.predict_proba(np.zeros((batch, 224, 224, 3), dtype=np.uint8))
    return classifier


def onnx_runner(module: Any, tag: str, cache_dir: str | None) -> Any:
    """Export (or reuse the cached export of) the model and open an ONNX Runtime session."""
    import tempfile

    import torch

    from model_store.onnx_backend import OnnxRunner, export_onnx

    folder = Path(cache_dir or tempfile.gettempdir()) / "onnx"
    path = folder / f"{tag.replace(':', '-')}.onnx"
    if not path.exists():
        logger.info("exporting %s to ONNX (%s)", tag, path)
        export_onnx(module, path)
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
