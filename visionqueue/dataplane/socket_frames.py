"""The framing of the front -> classifier crop socket: one request, one answer, by call id.

A request is ``REQUEST`` (magic, call id, crops ``N, H, W, C``, the API name's length, the
priority class (``visionqueue.dataplane.priority.Priority``), the milliseconds it may wait in the
queue before its forward pass, 0 for no limit), the API name (UTF-8) and ``N*H*W*C`` bytes of uint8 crops, C-ordered. An answer is ``ANSWER``
(magic, call id, status, ``rows, cols``, body length) and either ``rows*cols`` float32 values
(status ``OK``) or an HTTP status code's reason in UTF-8 (any other status: the code BentoML's
route would have answered). Integers are big-endian. A frame that breaks these rules ends the
connection: the stream cannot be resynchronised.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"VQC2"
# magic, call id, n, h, w, c, len(api), class of work, timeout ms (0: none)
REQUEST = struct.Struct("!4sIIHHHHBI")
ANSWER = struct.Struct("!4sIHIII")  # magic, call id, status, rows, cols, len(body)
OK = 200
MAX_BODY = 512 * 2**20  # 3400 crops of 224x224x3: far above any batch


class FrameError(ValueError):
    """A frame that breaks the format (wrong magic, absurd size): the connection is unusable."""


@dataclass(frozen=True)
class Request:
    """A parsed request header: what to classify, in which class, for how long at most."""

    call_id: int
    shape: tuple[int, int, int, int]
    name_len: int
    work_class: int = 0
    timeout_ms: int = 0


def request_header(
    call_id: int, api: str, crops: np.ndarray, work_class: int = 0, timeout_ms: int = 0
) -> bytes:
    """Return a request's header and API name for ``(N, H, W, C)`` uint8 ``crops``."""
    if crops.dtype != np.uint8 or crops.ndim != 4:
        raise ValueError(f"crops must be (N, H, W, C) uint8, got {crops.dtype} {crops.shape}")
    name = api.encode()
    timeout = min(max(0, timeout_ms), 2**32 - 1)
    return REQUEST.pack(MAGIC, call_id, *crops.shape, len(name), work_class, timeout) + name


def parse_request(header: bytes) -> Request:
    """Return the fields of a request header."""
    magic, call_id, n, h, w, c, name_len, work_class, timeout_ms = REQUEST.unpack(header)
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r}")
    if n * h * w * c > MAX_BODY:
        raise FrameError(f"crops of {n * h * w * c} bytes")
    return Request(call_id, (n, h, w, c), name_len, work_class, timeout_ms)


def answer_frame(call_id: int, rows: np.ndarray) -> list[bytes | memoryview]:
    """Return the pieces of a successful answer carrying ``(rows, cols)`` float32 ``rows``."""
    out = np.ascontiguousarray(rows, dtype=np.float32)
    if out.ndim != 2:
        raise ValueError(f"answers are (rows, cols), got {out.shape}")
    header = ANSWER.pack(MAGIC, call_id, OK, out.shape[0], out.shape[1], out.nbytes)
    return [header, out.data.cast("B")]


def error_frame(call_id: int, status: int, reason: str) -> bytes:
    """Return a failed answer: the HTTP status BentoML's route would give, and why."""
    body = reason.encode()[:4096]
    return ANSWER.pack(MAGIC, call_id, status, 0, 0, len(body)) + body


def parse_answer(header: bytes) -> tuple[int, int, tuple[int, int], int]:
    """Return ``(call id, status, (rows, cols), body length)`` of an answer header."""
    magic, call_id, status, rows, cols, body_len = ANSWER.unpack(header)
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r}")
    if body_len > MAX_BODY or (status == OK and rows * cols * 4 != body_len):
        raise FrameError(f"answer of {body_len} bytes for {rows}x{cols}")
    return call_id, status, (rows, cols), body_len
