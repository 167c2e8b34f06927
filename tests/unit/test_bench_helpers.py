"""The benchmark's request builders: what it sends is what a client would send."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from python_multipart.multipart import MultipartParser

from bench.load import unique_jpeg
from bench.wrk import BOUNDARY, multipart
from tests.support import images


def test_unique_jpeg_changes_the_bytes_not_the_pixels() -> None:
    data = images.jpeg(64, 48)
    first, second = unique_jpeg(data, 1), unique_jpeg(data, 2)
    assert len({data, first, second}) == 3  # three distinct stored objects
    pixels = np.asarray(Image.open(io.BytesIO(data)))
    for variant in (first, second):
        assert (np.asarray(Image.open(io.BytesIO(variant))) == pixels).all()
    with pytest.raises(ValueError):
        unique_jpeg(images.png(8, 8), 1)


def test_wrk_bodies_are_one_well_formed_image_part() -> None:
    data = images.jpeg(32, 24)
    parts: list[tuple[bytes, bytes]] = []
    header = [b""]
    chunks: list[bytes] = []

    def on_header_value(buf: bytes, start: int, end: int) -> None:
        header[0] += buf[start:end]

    def on_part_data(buf: bytes, start: int, end: int) -> None:
        chunks.append(buf[start:end])

    def on_part_end() -> None:
        parts.append((header[0], b"".join(chunks)))
        header[0] = b""
        chunks.clear()

    parser = MultipartParser(
        BOUNDARY.encode(),
        {
            "on_header_value": on_header_value,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    parser.write(multipart(data))
    parser.finalize()
    assert len(parts) == 1
    disposition, body = parts[0]
    assert b'name="image"' in disposition and body == data
