"""Packed crops (base64 of raw uint8) come back exactly; malformed ones are refused."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from visionqueue.dataplane.crops_wire import pack_crops, packed_api, unpack_crops


def test_packed_crops_survive_json_exactly() -> None:
    crops = np.random.default_rng(5).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    wire = json.loads(json.dumps({"crops": pack_crops(crops)}))
    back = unpack_crops(wire["crops"])
    assert back.dtype == np.uint8
    assert back.shape == crops.shape
    assert (back == crops).all()


@pytest.mark.parametrize(
    "packed",
    [
        [base64.b64encode(bytes(10)).decode()],  # not a square RGB image
        ["not base64!"],
        [base64.b64encode(bytes(8 * 8 * 3)).decode(), base64.b64encode(bytes(4 * 4 * 3)).decode()],
    ],
)
def test_malformed_packed_crops_are_refused(packed: list[str]) -> None:
    with pytest.raises(ValueError):
        unpack_crops(packed)


def test_only_uint8_rgb_crops_are_packed() -> None:
    with pytest.raises(ValueError):
        pack_crops(np.zeros((1, 8, 8, 3), dtype=np.float32))


def test_packed_apis_never_collide_with_a_models_own() -> None:
    assert packed_api("classify") == "packed_classify"
    assert not packed_api("classify_x").startswith("classify")
