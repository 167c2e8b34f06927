"""Image factories: generated photos of many modes, real photos, and hostile files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def skimage_photo(name: str) -> bytes:
    """Return the bytes of a real photo shipped in the scikit-image wheel."""
    import skimage

    return (Path(skimage.__file__).parent / "data" / name).read_bytes()


def noise_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A smooth-ish random image: gradients plus noise, so resizing matters."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack(
        [(xx * 255 // max(width - 1, 1)), (yy * 255 // max(height - 1, 1)), (xx + yy) % 256],
        axis=-1,
    ).astype(np.int16)
    noisy = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(noisy, "RGB")
    return image if mode == "RGB" else image.convert(mode)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def jpeg(width: int = 640, height: int = 480, seed: int = 0, **params: object) -> bytes:
    return encode(noise_image(width, height, seed=seed), "JPEG", quality=90, **params)


def png(width: int = 320, height: int = 240, mode: str = "RGB", seed: int = 0) -> bytes:
    return encode(noise_image(width, height, mode, seed), "PNG")


def cmyk_jpeg(width: int = 400, height: int = 300) -> bytes:
    return encode(noise_image(width, height, "CMYK", seed=3), "JPEG", quality=90)


def exif_rotated_jpeg(width: int = 500, height: int = 300, orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(noise_image(width, height, seed=4), "JPEG", quality=90, exif=exif.tobytes())


def animated_gif(width: int = 200, height: int = 150, frames: int = 3) -> bytes:
    images = [noise_image(width, height, "P", seed=10 + i) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=50)
    return buf.getvalue()


def png_header_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A few-hundred-byte PNG whose header claims ``width x height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * (width + 1) * 4, 9)  # a few rows only
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    data = jpeg(800, 600, seed=7)
    return data[: len(data) // 3]
