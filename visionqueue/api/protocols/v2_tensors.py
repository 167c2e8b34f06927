"""Open Inference Protocol v2 tensors: parse an infer request, build its response.

Both encodings work in both directions: tensors in the JSON body, and Triton's binary tensor
data extension, where the JSON header (``Inference-Header-Content-Length`` bytes) is followed
by raw tensor bytes (``binary_data_size`` per tensor; a ``BYTES`` element is a 4-byte
little-endian length and its bytes). The served model has one input and one output:

- ``IMAGE``: ``BYTES`` ``[N]`` of encoded images (JSON: base64 strings), or ``UINT8``
  ``[N, H, W, 3]`` of decoded RGB pixels;
- ``PROBABILITIES``: ``FP32`` ``[N, C]``, or with Triton's classification extension
  (``"parameters": {"classification": k}``) ``BYTES`` ``[N, k]`` of ``"score:index:label"``.

Everything here is pure: the routes in ``v2.py`` feed it bytes and numpy arrays.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_store.inference import top_k
from visionqueue.core.errors import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMediaType

INPUT_NAME = "IMAGE"
OUTPUT_NAME = "PROBABILITIES"
# as many images as one POST /v1/jobs request may carry
MAX_IMAGES = 32
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class RequestedOutput:
    """How the client wants ``PROBABILITIES``: binary or JSON, raw or top-``classification``."""

    binary: bool
    classification: int = 0


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    images: list[bytes] | list[np.ndarray]
    output: RequestedOutput
    timeout_s: float | None = None  # "parameters": {"timeout": microseconds} (Triton's)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a request's ``Content-Encoding`` (gzip, deflate), refusing more than ``limit`` bytes."""
    if not encoding or encoding.lower() == "identity":
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.lower())
    if wbits is None:
        raise UnsupportedMediaType(
            f"unsupported Content-Encoding '{encoding}'; use gzip or deflate"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise BadRequest(f"the {encoding} request body is corrupt") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"the decompressed request body exceeds {limit} bytes")
    if not inflater.eof:
        raise BadRequest(f"the {encoding} request body is truncated")
    return data


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """Return the JSON header of an infer request and the binary tensor data after it."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise BadRequest("Inference-Header-Content-Length must be an integer") from None
        if not 0 < size <= len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length {size} does not fit the {len(body)}-byte body"
            )
        json_part, binary = body[:size], body[size:]
    try:
        header = json.loads(json_part)
    except (ValueError, RecursionError):
        raise BadRequest("the inference request is not valid JSON") from None
    if not isinstance(header, dict):
        raise BadRequest("the inference request must be a JSON object")
    return header, binary


_DONE = object()


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise BadRequest(f"input '{INPUT_NAME}': 'data' must be an array")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        item = next(stack[-1], _DONE)
        if item is _DONE:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            flat.append(item)
    return flat


def decode_bytes_elements(raw: bytes, count: int) -> list[bytes]:
    """Split a binary ``BYTES`` tensor into its ``count`` elements."""
    items: list[bytes] = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise BadRequest(f"input '{INPUT_NAME}': binary BYTES data ends early")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise BadRequest(f"input '{INPUT_NAME}': a BYTES element is longer than the data")
        items.append(raw[offset : offset + size])
        offset += size
    if offset != len(raw):
        raise BadRequest(f"input '{INPUT_NAME}': binary data holds more than {count} elements")
    return items


def encode_bytes_elements(items: list[bytes]) -> bytes:
    """Serialise ``BYTES`` elements as the binary tensor data extension lays them out."""
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def _shape(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise BadRequest(f"input '{INPUT_NAME}': 'shape' must be a list of non-negative integers")
    return value


def _batch_size(shape: list[int]) -> int:
    count = shape[0] if shape else 0
    if count < 1:
        raise BadRequest(f"input '{INPUT_NAME}' holds no image")
    if count > MAX_IMAGES:
        raise Unprocessable(
            f"at most {MAX_IMAGES} images per inference request", code="too_many_images"
        )
    return count


def _binary_size(parameters: dict[str, Any], name: str) -> int | None:
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest(f"input '{name}': binary_data_size must be a non-negative integer")
    return size


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: 'parameters' must be an object")
    return value


def _encoded_images(tensor: dict[str, Any], raw: bytes | None) -> list[bytes]:
    shape = _shape(tensor.get("shape"))
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise BadRequest(f"input '{INPUT_NAME}' (BYTES) must have shape [N] or [N, 1]")
    count = _batch_size(shape)
    if raw is not None:
        return decode_bytes_elements(raw, count)
    if "data" not in tensor:
        raise BadRequest(f"input '{INPUT_NAME}' has neither 'data' nor binary_data_size")
    items = _flatten(tensor["data"])
    if len(items) != count:
        raise BadRequest(f"input '{INPUT_NAME}': shape says {count} images, data has {len(items)}")
    images = []
    for item in items:
        if not isinstance(item, str):
            raise BadRequest(f"input '{INPUT_NAME}': JSON BYTES elements must be base64 strings")
        try:
            images.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest(
                f"input '{INPUT_NAME}': JSON BYTES elements must be base64-encoded images"
            ) from None
    return images


def _pixel_images(tensor: dict[str, Any], raw: bytes | None) -> list[np.ndarray]:
    shape = _shape(tensor.get("shape"))
    if len(shape) != 4 or shape[3] != 3:
        raise BadRequest(f"input '{INPUT_NAME}' (UINT8) must have shape [N, H, W, 3]")
    _batch_size(shape)
    size = math.prod(shape)
    if raw is not None:
        if len(raw) != size:
            raise BadRequest(f"input '{INPUT_NAME}': shape needs {size} bytes, got {len(raw)}")
        pixels = np.frombuffer(raw, dtype=np.uint8)
    else:
        if "data" not in tensor:
            raise BadRequest(f"input '{INPUT_NAME}' has neither 'data' nor binary_data_size")
        values = _flatten(tensor["data"])
        if len(values) != size:
            raise BadRequest(f"input '{INPUT_NAME}': shape needs {size} values, got {len(values)}")
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in values
        ):
            raise BadRequest(f"input '{INPUT_NAME}': UINT8 values must be integers in 0..255")
        pixels = np.asarray(values, dtype=np.uint8)
    return list(pixels.reshape(shape))


def _requested_output(header: dict[str, Any], default_binary: bool) -> RequestedOutput:
    outputs = header.get("outputs")
    if outputs is None:
        return RequestedOutput(binary=default_binary)
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise BadRequest("'outputs' must be a list of objects")
    if len(outputs) != 1 or outputs[0].get("name") != OUTPUT_NAME:
        names = [o.get("name") for o in outputs]
        raise BadRequest(f"the model has one output, '{OUTPUT_NAME}'; requested {names}")
    parameters = _parameters(outputs[0].get("parameters"), f"output '{OUTPUT_NAME}'")
    binary = parameters.get("binary_data", default_binary)
    if not isinstance(binary, bool):
        raise BadRequest(f"output '{OUTPUT_NAME}': binary_data must be a boolean")
    count = parameters.get("classification", 0)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise BadRequest(f"output '{OUTPUT_NAME}': classification must be a positive integer")
    return RequestedOutput(binary=binary, classification=count)


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an infer request body (JSON, or JSON then binary tensor data)."""
    header, binary = split_body(body, header_length)
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    parameters = _parameters(header.get("parameters"), "the request")
    default_binary = parameters.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise BadRequest("binary_data_output must be a boolean")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
        raise BadRequest("'inputs' must be a list of tensor objects")
    if len(inputs) != 1 or inputs[0].get("name") != INPUT_NAME:
        names = [t.get("name") for t in inputs]
        raise BadRequest(f"the model has one input, '{INPUT_NAME}'; got {names}")
    tensor = inputs[0]
    size = _binary_size(_parameters(tensor.get("parameters"), f"input '{INPUT_NAME}'"), INPUT_NAME)
    if size is not None and size != len(binary):
        raise BadRequest(
            f"input '{INPUT_NAME}': binary_data_size is {size} but {len(binary)} bytes follow"
        )
    if size is None and binary:
        raise BadRequest("binary data follows the header but no input declares binary_data_size")
    raw = binary if size is not None else None
    datatype = tensor.get("datatype")
    images: list[bytes] | list[np.ndarray]
    if datatype == "BYTES":
        images = _encoded_images(tensor, raw)
    elif datatype == "UINT8":
        images = _pixel_images(tensor, raw)
    else:
        raise BadRequest(
            f"input '{INPUT_NAME}' must be BYTES (encoded images) or UINT8 (pixels), not {datatype!r}"
        )
    return InferRequest(
        request_id, images, _requested_output(header, default_binary), _timeout(parameters)
    )


def _timeout(parameters: dict[str, Any]) -> float | None:
    """The request's ``timeout`` parameter (microseconds, as tritonclient sends it) in seconds."""
    value = parameters.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadRequest("timeout must be a positive integer (microseconds)")
    return value / 1e6


def classification_strings(probs: np.ndarray, labels: tuple[str, ...], count: int) -> list[str]:
    """Return one image's top ``count`` classes as ``"score:index:label"``, best first.

    The ranking and scores are ``/predict``'s (``model_store.inference.top_k``); the score
    is the float's shortest round-trip form, so it parses back to ``/predict``'s value.
    """
    return [f"{p['confidence']!r}:{p['index']}:{p['class']}" for p in top_k(probs, labels, count)]


def infer_response(
    request: InferRequest,
    model_name: str,
    model_version: str,
    probs: np.ndarray,
    labels: tuple[str, ...],
) -> tuple[bytes, dict[str, str]]:
    """Build the infer response body and its headers (binary tensor data when asked for)."""
    wanted = request.output
    tensor: dict[str, Any] = {"name": OUTPUT_NAME}
    raw: bytes | None = None
    if wanted.classification:
        rows = [classification_strings(row, labels, wanted.classification) for row in probs]
        tensor.update(datatype="BYTES", shape=[len(rows), len(rows[0])])
        if wanted.binary:
            raw = encode_bytes_elements([s.encode() for row in rows for s in row])
        else:
            tensor["data"] = [s for row in rows for s in row]
    else:
        values = np.ascontiguousarray(probs, dtype="<f4")
        tensor.update(datatype="FP32", shape=list(values.shape))
        if wanted.binary:
            raw = values.tobytes()
        else:
            tensor["data"] = values.ravel().tolist()
    if raw is not None:
        tensor["parameters"] = {"binary_data_size": len(raw)}
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        body["id"] = request.id
    body["outputs"] = [tensor]
    header = json.dumps(body, separators=(",", ":")).encode()
    if raw is None:
        return header, {"content-type": "application/json"}
    return header + raw, {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
