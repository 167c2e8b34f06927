"""Open Inference Protocol v2 tensors: the binary layout, compression caps, responses."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest

from visionqueue.api.protocols import v2_tensors as v2
from visionqueue.core.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType


def test_bytes_elements_round_trip_and_refuse_leftovers() -> None:
    items = [b"", b"abc", bytes(range(256))]
    raw = v2.encode_bytes_elements(items)
    assert v2.decode_bytes_elements(raw, 3) == items
    with pytest.raises(BadRequest):
        v2.decode_bytes_elements(raw, 2)  # bytes left over
    with pytest.raises(BadRequest):
        v2.decode_bytes_elements(raw[:-1], 3)  # the last element ends early


def test_decompression_is_capped_and_checked() -> None:
    body = b"x" * 1000
    assert v2.decompress(gzip.compress(body), "gzip", 1000) == body
    assert v2.decompress(zlib.compress(body), "deflate", 1000) == body
    with pytest.raises(PayloadTooLarge):
        v2.decompress(gzip.compress(body), "gzip", 999)
    with pytest.raises(BadRequest):
        v2.decompress(gzip.compress(body)[:-12], "gzip", 1000)  # truncated
    with pytest.raises(UnsupportedMediaType):
        v2.decompress(body, "br", 1000)


def test_a_binary_classification_response_parses_back() -> None:
    header = json.dumps(
        {
            "id": "r1",
            "inputs": [
                {"name": "IMAGE", "datatype": "BYTES", "shape": [2], "data": ["AA==", "AQ=="]}
            ],
            "outputs": [
                {"name": "PROBABILITIES", "parameters": {"classification": 2, "binary_data": True}}
            ],
        }
    ).encode()
    request = v2.parse_infer_request(header, None)
    assert request.images == [b"\x00", b"\x01"]
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], dtype=np.float32)
    body, headers = v2.infer_response(request, "m", "1", probs, ("a", "b", "c"))
    size = int(headers["inference-header-content-length"])
    answer = json.loads(body[:size])
    assert answer["id"] == "r1" and answer["outputs"][0]["shape"] == [2, 2]
    strings = v2.decode_bytes_elements(body[size:], 4)
    assert [s.decode().split(":", 1)[1] for s in strings] == ["1:b", "2:c", "0:a", "2:c"]
    assert float(strings[0].decode().split(":")[0]) == float(np.float32(0.7))


def test_fp32_probabilities_in_binary_are_little_endian_rows() -> None:
    request = v2.InferRequest(None, [b""], v2.RequestedOutput(binary=True))
    probs = np.array([[0.25, 0.75]], dtype=np.float32)
    body, headers = v2.infer_response(request, "m", "1", probs, ("a", "b"))
    size = int(headers["inference-header-content-length"])
    assert np.array_equal(np.frombuffer(body[size:], dtype="<f4").reshape(1, 2), probs)
