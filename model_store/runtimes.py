"""Which runtime runs a stored model, on which device: decided once, then reported as is.

=============  =====================================  ======================================
format         asked for                              runs on
=============  =====================================  ======================================
any            ``cuda`` + ``onnxruntime``, ORT has    ONNX Runtime, ``CUDAExecutionProvider``
               its CUDA provider
state_dict     ``cuda`` + ``onnxruntime``, no CUDA    torch eager on CUDA
               provider (CPU-only ``onnxruntime``)
onnx           ``cuda``, no CUDA provider             ONNX Runtime on the CPU (nothing else
                                                      runs an ONNX file on CUDA here)
any            ``openvino``                           OpenVINO on the CPU (device ``cpu``)
torchscript    ``compile``/``onnxruntime``/``openvino``  torch eager (those need the module)
=============  =====================================  ======================================

``auto`` means ``AUTO_CPU_BACKEND`` on the CPU and ``onnxruntime`` (CUDA provider, else
torch) on CUDA. The provider a session really enabled is read back from it
(``session.get_providers()``), so an ``onnxruntime-gpu`` that cannot load its CUDA libraries
is reported (and replaced) rather than trusted.
"""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("auto", "eager", "channels_last", "compile", "onnxruntime", "openvino")
# on this project's 2-core reference CPU, fp32 (docs/benchmarks.md, "OpenVINO and int8")
AUTO_CPU_BACKEND = "onnxruntime"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
GRAPH_BACKENDS = ("onnxruntime", "openvino")  # run an ONNX graph, not the torch module


@dataclass(frozen=True)
class Runtime:
    """The backend that runs a model, its device, and the provider it asks the runtime for."""

    backend: str
    device: str
    provider: str

    @property
    def runs_graph(self) -> bool:
        return self.backend in GRAPH_BACKENDS


def torch_provider(device: str) -> str:
    return f"torch:{device}"


def choose_runtime(kind: str, backend: str, device: str, ort_providers: list[str]) -> Runtime:
    """Pick the runtime for a model of format ``kind`` (``device`` already resolved)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown inference backend {backend!r}; choose from {BACKENDS}")
    cuda = device.startswith("cuda")
    ort_cuda = CUDA_PROVIDER in ort_providers
    if backend == "auto":
        backend = "onnxruntime" if cuda else AUTO_CPU_BACKEND
    if kind == "onnx":
        if backend == "openvino":
            return Runtime("openvino", "cpu", "openvino:CPU")
        if cuda and ort_cuda:
            return Runtime("onnxruntime", device, CUDA_PROVIDER)
        return Runtime("onnxruntime", "cpu", CPU_PROVIDER)
    if kind == "torchscript" and backend in ("compile", *GRAPH_BACKENDS):
        return Runtime("eager", device, torch_provider(device))
    if backend == "openvino":
        return Runtime("openvino", "cpu", "openvino:CPU")
    if backend == "onnxruntime":
        if not cuda:
            return Runtime("onnxruntime", device, CPU_PROVIDER)
        if ort_cuda:
            return Runtime("onnxruntime", device, CUDA_PROVIDER)
        return Runtime("eager", device, torch_provider(device))
    return Runtime(backend, device, torch_provider(device))


def ort_available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())
