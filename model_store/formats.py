"""Read a classifier file of any supported kind, told apart by content, never by name.

Kind          how it is recognised                          what it holds
state_dict    a ``torch.save`` zip (``data.pkl``, no code)  weights for a torchvision builder
              or a legacy torch pickle
torchscript   a ``torch.jit.save`` zip (``code/``, ``constants.pkl``)  graph and weights
onnx          an ONNX protobuf (``onnx.checker`` accepts it)  graph and weights

Every model must map a float ``(N, 3, crop, crop)`` batch to ``(N, C)`` logits; this module
checks that by running it once on a blank batch.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from model_store.weights import WeightsError

STATE_DICT = "state_dict"
TORCHSCRIPT = "torchscript"
ONNX = "onnx"
FORMATS = (STATE_DICT, TORCHSCRIPT, ONNX)

_LEGACY_TORCH_MAGIC = (
    b"\x80"  # protocol-2 pickle: torch.save(..., _use_new_zipfile_serialization=False)
)
_PROBE_BATCH = 2


def detect_format(path: Path) -> str:
    """Return the kind of classifier file ``path`` is, or raise ``WeightsError`` saying why not."""
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}") from None
    except OSError as exc:
        raise WeightsError(f"weights file {path} is unreadable ({type(exc).__name__})") from None
    if not head:
        raise WeightsError(f"weights file {path} is empty")
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            raise WeightsError(
                f"weights file {path} is a corrupt or truncated zip archive (torch.save or "
                "torch.jit.save output cut short?)"
            ) from None
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return TORCHSCRIPT
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return STATE_DICT
        raise WeightsError(
            f"weights file {path} is a zip archive but neither a torch.save checkpoint nor a "
            "TorchScript archive"
        )
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return STATE_DICT
    if _is_onnx(path):
        return ONNX
    raise WeightsError(
        f"weights file {path} is not a torch state_dict checkpoint, a TorchScript archive or an "
        "ONNX model (corrupt or truncated?)"
    )


def _is_onnx(path: Path) -> bool:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception:  # protobuf DecodeError, ValidationError, ...: not (a whole) ONNX model
        return False
    return len(model.graph.node) > 0


def extract_state_dict(obj: Any, path: Path) -> dict[str, Any]:
    """Return the tensor mapping inside a loaded checkpoint (plain or wrapped in a dict)."""
    import torch

    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and all(isinstance(k, str) for k in obj):
            # checkpoints saved from DataParallel prefix every key with "module."
            return {k.removeprefix("module."): v for k, v in tensors.items()}
    raise WeightsError(f"checkpoint {path} does not hold a state_dict (a mapping of tensors)")


def load_state_dict(path: Path) -> dict[str, Any]:
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0][:200] if "weights_only" not in str(exc) else ""
        raise WeightsError(
            f"checkpoint {path} is unreadable as a state_dict ({type(exc).__name__}"
            + (f": {reason}" if reason else "")
            + "); save model.state_dict(), or export TorchScript or ONNX"
        ) from None
    return extract_state_dict(loaded, path)


def check_output(output: Any, batch: int, where: str) -> int:
    """Return C when ``output`` is a ``(batch, C)`` array, else raise ``WeightsError``."""
    shape = tuple(getattr(output, "shape", ()))
    if len(shape) != 2 or shape[0] != batch or shape[1] < 1:
        got = f"shape {shape}" if shape else type(output).__name__
        raise WeightsError(
            f"{where}: the model's output is not (N, C) class scores: for a batch of {batch} it "
            f"gave {got}"
        )
    return int(shape[1])


def probe_torch(module: Any, crop: int, where: str) -> int:
    """Run ``module`` on a blank ``(2, 3, crop, crop)`` batch; return its class count."""
    import torch

    try:
        with torch.inference_mode():
            output = module(torch.zeros(_PROBE_BATCH, 3, crop, crop))
    except Exception as exc:
        raise WeightsError(
            f"{where}: the model fails on a ({_PROBE_BATCH}, 3, {crop}, {crop}) input "
            f"({type(exc).__name__}); pass --crop with the input size it was trained on"
        ) from None
    return check_output(output, _PROBE_BATCH, where)


def load_torchscript(path: Path) -> Any:
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # "torch.jit is deprecated": still how archives load
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise WeightsError(
            f"TorchScript archive {path} cannot be loaded ({type(exc).__name__}): corrupt or "
            "truncated?"
        ) from None
    return module.eval()


def onnx_input(path: Path) -> tuple[str, list[Any]]:
    """Return the ONNX model's single image input: (name, shape with None for dynamic dims)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise WeightsError(
            f"ONNX model {path} has {len(inputs)} inputs; a classifier takes one (N, 3, H, W) batch"
        )
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(shape) != 4 or shape[1] not in (3, None):
        raise WeightsError(f"ONNX model {path} takes shape {shape}, not an (N, 3, H, W) batch")
    return inputs[0].name, shape


def probe_onnx(path: Path, crop: int, where: str) -> int:
    """Run the ONNX model on a blank batch at ``crop``; return its class count."""
    import numpy as np
    import onnxruntime as ort

    _, shape = onnx_input(path)
    if shape[2] not in (crop, None) or shape[3] not in (crop, None):
        raise WeightsError(
            f"{where}: the ONNX model takes {shape[2]}x{shape[3]} images but the crop is {crop}; "
            f"pass --crop {shape[2]}"
        )
    batch = 1 if shape[0] == 1 else _PROBE_BATCH
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run(
            None, {session.get_inputs()[0].name: np.zeros((batch, 3, crop, crop), np.float32)}
        )
    except Exception as exc:
        raise WeightsError(
            f"{where}: ONNX Runtime cannot run the model on a ({batch}, 3, {crop}, {crop}) "
            f"float32 input ({type(exc).__name__})"
        ) from None
    return check_output(out[0], batch, where)
